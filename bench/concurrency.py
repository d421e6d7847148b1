"""Async concurrency: 200 concurrent ainvoke / astream calls, ChatModelPlug vs raw AsyncOpenAI.

All calls go to one loopback OpenAI server (bench/_server.py, another process, answering at
once). A wave is ``--concurrency`` calls started together with ``asyncio.gather``; throughput is
calls per second of wall time over ``--waves`` waves. Alternatives alternate wave blocks in a
rotating order; the table shows medians over rounds. ChatOpenAI is shown for reference.

Target: ChatModelPlug throughput at least 0.9x raw AsyncOpenAI, for ainvoke and astream.

    python bench/concurrency.py [--quick] [--concurrency 200] [--waves 3] [--rounds 5]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _report import Table, median, parser
from _server import MODEL, TOKENS, loopback_server

PROMPT = "What is the capital of France?"
MESSAGES = [{"role": "user", "content": PROMPT}]
ANSWER = "".join(TOKENS)


def calls(url: str) -> dict[str, dict[str, Callable[[], Awaitable[str]]]]:
    import openai
    from langchain_openai import ChatOpenAI

    from langchain_modelplug import ChatModelPlug

    raw = openai.AsyncOpenAI(base_url=url, api_key="bench")
    ours = ChatModelPlug(model=f"vllm:{MODEL}", base_url=url)
    theirs = ChatOpenAI(model=MODEL, base_url=url, api_key="bench")

    async def raw_invoke() -> str:
        r = await raw.chat.completions.create(model=MODEL, messages=MESSAGES)
        return r.choices[0].message.content

    async def raw_stream() -> str:
        out = []
        events = await raw.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                                   stream_options={"include_usage": True})
        async for event in events:
            if event.choices and event.choices[0].delta.content:
                out.append(event.choices[0].delta.content)
        return "".join(out)

    def ainvoke(llm: Any) -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            return (await llm.ainvoke(PROMPT)).content
        return call

    def astream(llm: Any) -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            return "".join([c.content async for c in llm.astream(PROMPT)])
        return call

    return {
        "ainvoke": {"raw AsyncOpenAI": raw_invoke, "ChatModelPlug": ainvoke(ours),
                    "ChatOpenAI": ainvoke(theirs)},
        "astream": {"raw AsyncOpenAI": raw_stream, "ChatModelPlug": astream(ours),
                    "ChatOpenAI": astream(theirs)},
    }


async def waves(call: Callable[[], Awaitable[str]], concurrency: int, n: int) -> float:
    """Calls per second over ``n`` waves of ``concurrency`` concurrent calls."""
    start = time.perf_counter()
    for _ in range(n):
        answers = await asyncio.gather(*(call() for _ in range(concurrency)))
        if any(a != ANSWER for a in answers):
            raise RuntimeError(f"unexpected answers: {set(answers)}")
    return concurrency * n / (time.perf_counter() - start)


async def run(url: str, concurrency: int, n: int, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for mode, alternatives in calls(url).items():
        names = list(alternatives)
        for name in names:  # warm-up: open the connection pools
            await waves(alternatives[name], concurrency, 1)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                samples[name].append(await waves(alternatives[name], concurrency, n))
        results[mode] = {name: median(v) for name, v in samples.items()}
        print(mode, {k: round(v) for k, v in results[mode].items()}, flush=True)
    return results


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--waves", type=int, default=3, help="waves per sample")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    if args.quick:
        args.waves, args.rounds = 1, 3

    with loopback_server() as url:
        results = asyncio.run(run(url, args.concurrency, args.waves, args.rounds))

    table = Table(
        "Async concurrency (bench/concurrency.py)",
        f"{args.concurrency} concurrent calls against a loopback OpenAI server that answers at "
        "once (another process); calls per second of wall time.",
        ["call", "raw AsyncOpenAI /s", "ChatModelPlug /s", "ChatOpenAI /s",
         "ours / raw", "ours / ChatOpenAI"],
    )
    for mode, r in results.items():
        ours, raw, lc = r["ChatModelPlug"], r["raw AsyncOpenAI"], r["ChatOpenAI"]
        table.row(mode, raw, ours, lc, f"{ours / raw:.2f}x", f"{ours / lc:.2f}x")
    for mode, r in results.items():
        ratio = r["ChatModelPlug"] / r["raw AsyncOpenAI"]
        table.check(f"{mode}: ours / raw AsyncOpenAI", f"{ratio:.2f}x", ">= 0.9x", ratio >= 0.9)
    table.note(f"{args.waves} waves of {args.concurrency} per sample, {args.rounds} rotating "
               "rounds, medians. The server shares the machine's cores with the client.")
    table.device = "cpu (networked path; no model)"
    table.finish(args)


if __name__ == "__main__":
    main()
