"""Failover: time to the fallback's answer when the primary refuses connections.

The primary is an OpenAI-compatible model whose port refuses connections (a loopback port that
was just free); the fallback is the same kind of model on the loopback OpenAI server
(bench/_server.py, another process, answering at once). Compared, in wall time per call:

- FallbackChatModel([primary, fallback]): the refused connection, the failover decision, then
  the fallback's call;
- the fallback alone (a single ChatModelPlug call): the floor;
- primary.with_fallbacks([fallback]) (LangChain's RunnableWithFallbacks), for reference.

The primary has ``max_retries=0``: the SDK's own retries (default 2, with 0.5 s+ backoff) would
otherwise wait before failing over; that case is shown once as a reference row.

Target: at most 10 ms added over the single call to the fallback.

    python bench/failover.py [--quick] [--calls 20] [--rounds 7]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from _report import Table, interleaved, median, parser
from _server import MODEL, TOKENS, loopback_server, refused_url

PROMPT = "What is the capital of France?"
ANSWER = "".join(TOKENS)


def _sync(llm: Any, mode: str) -> Callable[[], str]:
    if mode == "invoke":
        return lambda: llm.invoke(PROMPT).content
    return lambda: "".join(c.content for c in llm.stream(PROMPT))


def _async(llm: Any, mode: str) -> Callable[[], str]:
    """A sync callable running the async call on one event loop kept for the whole run."""
    loop = _loop()

    async def ainvoke() -> str:
        return (await llm.ainvoke(PROMPT)).content

    async def astream() -> str:
        return "".join([c.content async for c in llm.astream(PROMPT)])

    coro = ainvoke if mode == "ainvoke" else astream
    return lambda: loop.run_until_complete(coro())


_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    return _LOOP


def _block(call: Callable[[], str], n: int) -> float:
    """Wall milliseconds per call over ``n`` calls (each answer checked)."""
    start = time.perf_counter()
    for _ in range(n):
        got = call()
        if got != ANSWER:
            raise RuntimeError(f"answered {got!r}, expected {ANSWER!r}")
    return (time.perf_counter() - start) * 1000 / n


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--calls", type=int, default=20, help="calls per block")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    if args.quick:
        args.calls, args.rounds = 8, 3

    from langchain_modelplug import ChatModelPlug, FallbackChatModel

    results: dict[str, dict[str, float]] = {}
    with loopback_server() as url:
        dead = refused_url()
        fallback = ChatModelPlug(model=f"vllm:{MODEL}", base_url=url)
        primary = ChatModelPlug(model=f"vllm:{MODEL}", base_url=dead, max_retries=0)
        ours = FallbackChatModel([primary, fallback])
        theirs = primary.with_fallbacks([fallback])
        models = {"fallback alone": fallback, "FallbackChatModel": ours,
                  "with_fallbacks": theirs}
        for mode in ("invoke", "stream", "ainvoke", "astream"):
            make = _sync if mode in ("invoke", "stream") else _async
            runs = {name: make(m, mode) for name, m in models.items()}
            for call in runs.values():  # warm-up (connection pools, imports)
                _block(call, 3)
            samples = interleaved({n: (lambda c=c: _block(c, args.calls))
                                   for n, c in runs.items()}, args.rounds)
            results[mode] = {n: median(v) for n, v in samples.items()}
            print(mode, {n: round(v, 3) for n, v in results[mode].items()}, flush=True)
        # Reference: the SDK's default retries on the primary (backoff before failing over).
        retrying = FallbackChatModel([ChatModelPlug(model=f"vllm:{MODEL}", base_url=dead),
                                      fallback])
        default_retries = median([_block(_sync(retrying, "invoke"), 1)
                                  for _ in range(1 if args.quick else 3)])
    if _LOOP is not None:
        _LOOP.close()

    table = Table(
        "Failover (bench/failover.py)",
        "Wall time to the fallback's answer when the primary refuses connections "
        "(max_retries=0), vs a single call to the fallback; loopback OpenAI server in another "
        "process.",
        ["call", "fallback alone ms", "FallbackChatModel ms", "added ms",
         "with_fallbacks ms", "with_fallbacks added ms"],
    )
    for mode, r in results.items():
        base = r["fallback alone"]
        table.row(mode, base, r["FallbackChatModel"], f"{r['FallbackChatModel'] - base:+.2f}",
                  r["with_fallbacks"], f"{r['with_fallbacks'] - base:+.2f}")
    for mode, r in results.items():
        added = r["FallbackChatModel"] - r["fallback alone"]
        table.check(f"{mode}: added over the fallback alone", f"{added:+.2f} ms", "<= +10 ms",
                    added <= 10)
    table.check("invoke, primary with the SDK's default retries (2)",
                f"{default_retries:.0f} ms total", "reference (SDK backoff)", None)
    table.note(f"{args.calls} calls per block, {args.rounds} rotating rounds, medians.")
    table.device = "cpu (networked path; no model)"
    table.finish(args)


if __name__ == "__main__":
    main()
