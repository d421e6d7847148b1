"""Routing: health memory with a hanging primary, a pool's own cost, a pool's throughput.

1. A primary that accepts connections and never answers (a listening socket nobody reads; the
   client's ``timeout`` ends each try), in front of a fallback on the loopback OpenAI server
   (bench/_server.py, another process, answering at once). Wall time for N sequential calls:
   FallbackChatModel (health memory: the primary is skipped after its first timeout, until its
   cooldown), FallbackChatModel(health=False) (every call waits for the timeout again, as before
   health memory) and LangChain's ``primary.with_fallbacks([fallback])``.
2. A pool's own cost per call: FallbackChatModel over 3 replicas with strategy="round_robin"
   minus one ChatModelPlug calling one replica directly (invoke; target <= 0.2 ms); and the same
   with the pool's 3 members on one server (the client's cost without the spread over servers).
3. Throughput under 64 concurrent clients (ainvoke): a 3-replica pool (round_robin and
   least_outstanding) vs one replica, each replica of bounded capacity (4 slots, 50 ms an
   answer, as a small llama-server -np 4 would be).

    python bench/routing.py [--quick] [--timeout 2] [--calls 20]
"""

from __future__ import annotations

import asyncio
import socket
import time
from contextlib import ExitStack
from typing import Any

from _report import Table, interleaved, median, parser
from _server import MODEL, TOKENS, loopback_server

PROMPT = "What is the capital of France?"
ANSWER = "".join(TOKENS)


def hanging_url(stack: ExitStack) -> str:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def sequential(llm: Any, calls: int) -> float:
    """Wall seconds for ``calls`` sequential invokes (each answer checked)."""
    start = time.perf_counter()
    for _ in range(calls):
        got = llm.invoke(PROMPT).content
        if got != ANSWER:
            raise RuntimeError(f"answered {got!r}, expected {ANSWER!r}")
    return time.perf_counter() - start


def per_call_ms(llm: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        llm.invoke(PROMPT)
    return (time.perf_counter() - start) * 1000 / calls


def throughput(llm: Any, clients: int, total: int) -> float:
    """Calls per second with ``clients`` concurrent callers making ``total`` calls in all."""

    async def run() -> float:
        left = list(range(total))

        async def client() -> None:
            while left:
                left.pop()
                if (await llm.ainvoke(PROMPT)).content != ANSWER:
                    raise RuntimeError("wrong answer")

        await llm.ainvoke(PROMPT)  # warm-up: the client and its connection pool
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return total / (time.perf_counter() - start)

    return asyncio.run(run())


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--timeout", type=float, default=2.0, help="the primary's client timeout")
    p.add_argument("--calls", type=int, default=20, help="sequential calls (part 1)")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    if args.quick:
        args.timeout, args.rounds = 0.5, 3

    from langchain_modelplug import ChatModelPlug, FallbackChatModel
    from modelplug.routing import HealthTable

    def model(url: str, **kwargs: Any) -> ChatModelPlug:
        return ChatModelPlug(model=f"vllm:{MODEL}", base_url=url, **kwargs)

    table = Table(
        "Routing (bench/routing.py)",
        "Health memory with a primary that hangs; a pool's own cost per call; a 3-replica "
        "pool's throughput under 64 concurrent clients. Loopback OpenAI servers in other "
        "processes.",
        ["case", "ours", "alternative", "ratio"],
    )
    with ExitStack() as stack:
        # 1. A hanging primary.
        hanging = hanging_url(stack)
        url = stack.enter_context(loopback_server())
        fallback = model(url)
        primary = model(hanging, timeout=args.timeout, max_retries=0)
        fallback.invoke(PROMPT)  # warm-up
        sets = {"FallbackChatModel": FallbackChatModel([primary, fallback],
                                                       health=HealthTable()),
                "FallbackChatModel(health=False)": FallbackChatModel([primary, fallback],
                                                                     health=False),
                "with_fallbacks": primary.with_fallbacks([fallback])}
        seconds = {name: sequential(llm, args.calls) for name, llm in sets.items()}
        print("hanging primary", {k: round(v, 2) for k, v in seconds.items()}, flush=True)
        ours = seconds["FallbackChatModel"]
        for name in ("with_fallbacks", "FallbackChatModel(health=False)"):
            table.row(f"{args.calls} sequential calls, primary hangs ({args.timeout:g} s timeout)"
                      f" vs {name}", f"{ours:.2f} s", f"{seconds[name]:.2f} s",
                      f"{seconds[name] / ours:.1f}x faster")
        budget = args.timeout + 0.05 * args.calls
        table.check("hanging primary: ours, all calls", f"{ours:.2f} s",
                    f"<= one timeout + 50 ms a call ({budget:.2f} s)", ours <= budget)

        # 2. A pool's own cost per call.
        replicas = [url, stack.enter_context(loopback_server()),
                    stack.enter_context(loopback_server())]
        pool = FallbackChatModel([model(u) for u in replicas], strategy="round_robin",
                                 health=HealthTable())
        direct = model(url)
        calls = 50 if args.quick else 200
        for llm in (pool, direct):
            per_call_ms(llm, 20)  # warm-up: connections to every replica
        samples = interleaved({"pool": lambda: per_call_ms(pool, calls),
                               "direct": lambda: per_call_ms(direct, calls)}, args.rounds)
        pool_ms, direct_ms = median(samples["pool"]), median(samples["direct"])
        added = pool_ms - direct_ms
        print("pool overhead", round(pool_ms, 3), round(direct_ms, 3), flush=True)
        table.row("invoke per call: 3-replica round_robin pool vs one replica directly",
                  f"{pool_ms:.3f} ms", f"{direct_ms:.3f} ms", f"{added:+.3f} ms")
        table.check("pool overhead per call", f"{added:+.3f} ms", "<= +0.2 ms", added <= 0.2)
        # The same pool's members all on one server: the client's own cost alone, without
        # the spread over three server processes (which on 2 cores is not free either).
        same = FallbackChatModel([model(url) for _ in replicas], strategy="round_robin",
                                 health=HealthTable())
        per_call_ms(same, 20)
        samples = interleaved({"same": lambda: per_call_ms(same, calls),
                               "direct": lambda: per_call_ms(direct, calls)}, args.rounds)
        same_ms, direct_ms = median(samples["same"]), median(samples["direct"])
        print("pool overhead, one server", round(same_ms, 3), round(direct_ms, 3), flush=True)
        table.row("invoke per call: 3-member round_robin pool, all on one server, vs directly",
                  f"{same_ms:.3f} ms", f"{direct_ms:.3f} ms", f"{same_ms - direct_ms:+.3f} ms")

    # 3. Throughput of bounded replicas under 64 concurrent clients.
    total = 240 if args.quick else 960
    with ExitStack() as stack:
        bounded = [stack.enter_context(loopback_server(service_ms=50, slots=4))
                   for _ in range(3)]
        one = throughput(model(bounded[0]), 64, total)
        rates = {strategy: throughput(FallbackChatModel(
            [model(u) for u in bounded], strategy=strategy, health=HealthTable()), 64, total)
            for strategy in ("round_robin", "least_outstanding")}
    print("throughput", round(one, 1), {k: round(v, 1) for k, v in rates.items()}, flush=True)
    for strategy, rate in rates.items():
        table.row(f"calls/s, 64 clients: 3-replica {strategy} pool vs one replica",
                  f"{rate:.1f}", f"{one:.1f}", f"{rate / one:.2f}x")
    table.check("3-replica pool throughput vs one replica", f"{rates['round_robin'] / one:.2f}x",
                "close to 3x (each replica: 4 slots x 50 ms)",
                rates["round_robin"] / one >= 2.5)
    table.note(f"Part 1: {args.calls} calls each, sequential. Part 2: {calls} invokes per block, "
               f"{args.rounds} interleaved rounds, medians. Part 3: {total} calls, 64 clients.")
    table.device = "cpu (networked path; no model)"
    table.finish(args)


if __name__ == "__main__":
    main()
