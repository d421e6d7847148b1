"""Adapter overhead per call: ChatModelPlug vs ChatOpenAI vs the raw openai SDK.

All three talk to the same loopback OpenAI server (bench/_server.py, another process, answering
at once), so what differs is the client-side work of one call. Measured: CPU time of this
process per call (``time.process_time``: the server's work is out of it), for invoke and stream,
sync and async. Each round runs a block of calls per alternative, in an order that rotates every
round; the table shows medians over rounds.

- raw SDK: ``openai.OpenAI().chat.completions.create(...)`` (stream: iterate the events and join
  the text), the floor any adapter adds to;
- ChatOpenAI: ``langchain_openai.ChatOpenAI(base_url=...)``, what a LangChain user picks for an
  OpenAI-compatible server;
- ChatModelPlug: ``ChatModelPlug(model="vllm:bench-model", base_url=...)`` (the openai-compatible
  backend over the same SDK).

Targets: ChatModelPlug at most 1.05x ChatOpenAI, at most 0.3 ms above the raw SDK, and the
adapter's own conversion (ChatModelPlug minus "floor + core", below) at most 0.1 ms.

"floor + core" is one call that runs the LangChain floor and the core backend (streams: chunk by
chunk, interleaved as ChatModelPlug interleaves them): what ChatModelPlug would cost if its
conversion were free. It is measured as one call because the parts do not add up: run together,
the floor and the core backend cost more (0.1-0.2 ms here) than measured apart, as any code that
runs more per call does (caches). Subtracting the separate columns from ChatModelPlug's time
counts that difference as ours.

    python bench/overhead.py [--quick] [--calls 40] [--rounds 9] [--profile]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from _report import Table, interleaved, median, parser
from _server import MODEL, TOKENS, loopback_server

from modelplug import ChatRequest

PROMPT = "What is the capital of France?"
MESSAGES = [{"role": "user", "content": PROMPT}]
ANSWER = "".join(TOKENS)


def instant_model() -> Any:
    """A BaseChatModel with no I/O that answers the same tokens: LangChain's own cost per call."""
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, AIMessageChunk
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

    usage = {"input_tokens": 14, "output_tokens": len(TOKENS), "total_tokens": 14 + len(TOKENS)}

    class Instant(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "instant"

        def _generate(self, messages, stop=None, run_manager=None, **kw):
            return ChatResult(generations=[ChatGeneration(
                message=AIMessage(content=ANSWER, usage_metadata=usage))])

        async def _agenerate(self, messages, stop=None, run_manager=None, **kw):
            return self._generate(messages)

        def _chunks(self):
            for t in TOKENS:
                yield ChatGenerationChunk(message=AIMessageChunk(content=t))
            yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage))

        def _stream(self, messages, stop=None, run_manager=None, **kw):
            for chunk in self._chunks():
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

        async def _astream(self, messages, stop=None, run_manager=None, **kw):
            for chunk in self._chunks():
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    return Instant()


def build(url: str) -> dict[str, Any]:
    import openai
    from langchain_openai import ChatOpenAI

    from langchain_modelplug import ChatModelPlug

    return {
        "raw": openai.OpenAI(base_url=url, api_key="bench"),
        "araw": openai.AsyncOpenAI(base_url=url, api_key="bench"),
        "ChatOpenAI": ChatOpenAI(model=MODEL, base_url=url, api_key="bench"),
        "ChatModelPlug": ChatModelPlug(model=f"vllm:{MODEL}", base_url=url),
        "instant": instant_model(),
    }


def sync_calls(m: dict[str, Any]) -> dict[str, dict[str, Callable[[], str]]]:
    raw = m["raw"]
    backend = m["ChatModelPlug"].backend

    def core_invoke() -> str:
        return backend.chat(ChatRequest(messages=MESSAGES)).text

    def core_stream() -> str:
        return "".join(c.text for c in backend.stream(ChatRequest(messages=MESSAGES)))

    def raw_invoke() -> str:
        return raw.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0] \
            .message.content

    def raw_stream() -> str:
        out = []
        for event in raw.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}):
            if event.choices and event.choices[0].delta.content:
                out.append(event.choices[0].delta.content)
        return "".join(out)

    def lc_stream(llm: Any) -> Callable[[], str]:
        return lambda: "".join(c.content for c in llm.stream(PROMPT))

    def floor_and(core: Callable[[], str], floor: Callable[[], Any]) -> Callable[[], str]:
        return lambda: (floor(), core())[1]

    def floor_with_core_stream() -> str:
        # chunk by chunk, in the order ChatModelPlug's stream runs them (LangChain's closing
        # chunk after the last)
        floor, out = m["instant"].stream(PROMPT), []
        for chunk in backend.stream(ChatRequest(messages=MESSAGES)):
            next(floor)
            out.append(chunk.text)
        for _ in floor:
            pass
        return "".join(out)

    return {
        "invoke": {"raw SDK": raw_invoke,
                   "ChatOpenAI": lambda: m["ChatOpenAI"].invoke(PROMPT).content,
                   "ChatModelPlug": lambda: m["ChatModelPlug"].invoke(PROMPT).content,
                   "core": core_invoke,
                   "LangChain floor": lambda: m["instant"].invoke(PROMPT).content,
                   "floor + core": floor_and(core_invoke, lambda: m["instant"].invoke(PROMPT))},
        "stream": {"raw SDK": raw_stream,
                   "ChatOpenAI": lc_stream(m["ChatOpenAI"]),
                   "ChatModelPlug": lc_stream(m["ChatModelPlug"]),
                   "core": core_stream, "LangChain floor": lc_stream(m["instant"]),
                   "floor + core": floor_with_core_stream},
    }


def async_calls(m: dict[str, Any]) -> dict[str, dict[str, Callable[[], Any]]]:
    araw = m["araw"]
    backend = m["ChatModelPlug"].backend

    async def core_invoke() -> str:
        return (await backend.achat(ChatRequest(messages=MESSAGES))).text

    async def core_stream() -> str:
        return "".join([c.text async for c in backend.astream(ChatRequest(messages=MESSAGES))])

    async def raw_invoke() -> str:
        r = await araw.chat.completions.create(model=MODEL, messages=MESSAGES)
        return r.choices[0].message.content

    async def raw_stream() -> str:
        out = []
        events = await araw.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                                    stream_options={"include_usage": True})
        async for event in events:
            if event.choices and event.choices[0].delta.content:
                out.append(event.choices[0].delta.content)
        return "".join(out)

    def lc_ainvoke(llm: Any) -> Callable[[], Any]:
        async def call() -> str:
            return (await llm.ainvoke(PROMPT)).content
        return call

    def lc_astream(llm: Any) -> Callable[[], Any]:
        async def call() -> str:
            return "".join([c.content async for c in llm.astream(PROMPT)])
        return call

    def floor_and(core: Callable[[], Any], floor: Callable[[], Any]) -> Callable[[], Any]:
        async def call() -> str:
            await floor()
            return await core()
        return call

    async def floor_with_core_stream() -> str:
        floor, out = m["instant"].astream(PROMPT), []
        async for chunk in backend.astream(ChatRequest(messages=MESSAGES)):
            await anext(floor)
            out.append(chunk.text)
        async for _ in floor:
            pass
        return "".join(out)

    return {
        "ainvoke": {"raw SDK": raw_invoke, "ChatOpenAI": lc_ainvoke(m["ChatOpenAI"]),
                    "ChatModelPlug": lc_ainvoke(m["ChatModelPlug"]), "core": core_invoke,
                    "LangChain floor": lc_ainvoke(m["instant"]),
                    "floor + core": floor_and(core_invoke, lc_ainvoke(m["instant"]))},
        "astream": {"raw SDK": raw_stream, "ChatOpenAI": lc_astream(m["ChatOpenAI"]),
                    "ChatModelPlug": lc_astream(m["ChatModelPlug"]), "core": core_stream,
                    "LangChain floor": lc_astream(m["instant"]),
                    "floor + core": floor_with_core_stream},
    }


def _block(call: Callable[[], str], n: int) -> float:
    """CPU milliseconds per call over ``n`` calls."""
    start = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - start) * 1000 / n


async def _ablock(call: Callable[[], Any], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        await call()
    return (time.process_time() - start) * 1000 / n


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--calls", type=int, default=40, help="calls per block")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--profile", action="store_true",
                   help="cProfile ChatModelPlug sync invoke and print the top entries")
    args = p.parse_args()
    if args.quick:
        args.calls, args.rounds = 15, 3

    results: dict[str, dict[str, float]] = {}
    with loopback_server() as url:
        models = build(url)
        for mode, calls in sync_calls(models).items():
            for name, call in calls.items():  # warm-up, and every answer is the same text
                for _ in range(5):
                    got = call()
                if got != ANSWER:
                    raise RuntimeError(f"{name} {mode} answered {got!r}, expected {ANSWER!r}")
            samples = interleaved({n: (lambda c=c: _block(c, args.calls))
                                   for n, c in calls.items()}, args.rounds)
            results[mode] = {n: median(v) for n, v in samples.items()}
            print(mode, {n: round(v, 3) for n, v in results[mode].items()}, flush=True)

        async def run_async() -> None:
            for mode, calls in async_calls(models).items():
                for name, call in calls.items():
                    for _ in range(5):
                        got = await call()
                    if got != ANSWER:
                        raise RuntimeError(f"{name} {mode} answered {got!r}")
                names = list(calls)
                samples: dict[str, list[float]] = {n: [] for n in names}
                for r in range(args.rounds):
                    for n in names[r % len(names):] + names[: r % len(names)]:
                        samples[n].append(await _ablock(calls[n], args.calls))
                results[mode] = {n: median(v) for n, v in samples.items()}
                print(mode, {n: round(v, 3) for n, v in results[mode].items()}, flush=True)

        asyncio.run(run_async())

        if args.profile:
            import cProfile
            import pstats

            call = sync_calls(models)["invoke"]["ChatModelPlug"]
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(300):
                call()
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(40)

    table = Table(
        "Adapter overhead per call (bench/overhead.py)",
        "CPU time of the client process per call against a loopback OpenAI server that answers "
        "at once (another process): ChatModelPlug vs ChatOpenAI vs the raw openai SDK.",
        ["call", "raw SDK ms", "ChatOpenAI ms", "ChatModelPlug ms", "ours / ChatOpenAI",
         "ours - raw ms", "core backend ms", "core - raw ms", "LangChain floor ms",
         "floor + core ms", "ours - (floor + core) ms"],
    )
    for mode, r in results.items():
        ours, lc, raw, core = r["ChatModelPlug"], r["ChatOpenAI"], r["raw SDK"], r["core"]
        table.row(mode, raw, lc, ours, f"{ours / lc:.3f}x", f"{ours - raw:+.3f}", core,
                  f"{core - raw:+.3f}", r["LangChain floor"], r["floor + core"],
                  f"{ours - r['floor + core']:+.3f}")
    for mode, r in results.items():
        ours, lc, raw = r["ChatModelPlug"], r["ChatOpenAI"], r["raw SDK"]
        table.check(f"{mode}: ours / ChatOpenAI", f"{ours / lc:.3f}x", "<= 1.05x",
                    ours / lc <= 1.05)
    for mode, r in results.items():
        ours, raw = r["ChatModelPlug"], r["raw SDK"]
        table.check(f"{mode}: ours - raw SDK", f"{ours - raw:+.3f} ms", "<= +0.3 ms",
                    ours - raw <= 0.3)
    for mode, r in results.items():
        own = r["ChatModelPlug"] - r["floor + core"]
        table.check(f"{mode}: ours - (floor + core), the adapter's own conversion",
                    f"{own:+.3f} ms", "<= +0.1 ms", own <= 0.1)
    table.note("core backend: modelplug's OpenAICompatBackend called with a ChatRequest, no "
               "LangChain: ours - raw splits into (core - raw), the core backend's own work, and "
               "(ours - core), LangChain's BaseChatModel run machinery that ChatOpenAI pays too "
               "plus the adapter's conversion (ours - (floor + core)).")
    table.note("LangChain floor: a BaseChatModel with no I/O answering the same tokens (same "
               "chunks when streaming): what LangChain's run machinery (callback managers, run "
               "ids, message/chunk objects, chunk merging) costs per call by itself.")
    table.note("floor + core: one call running the LangChain floor, then the core backend "
               "(streams: chunk by chunk, a floor chunk after each core chunk, as ChatModelPlug "
               "runs them); ours - (floor + core) is ChatModelPlug's own conversion (messages to "
               "a ChatRequest, answers and chunks to LangChain messages). Measured apart, the "
               "two parts add up to less than run together, so ours - core - floor overstates "
               "it.")
    table.note("Every stream call (all columns) opens a new connection: the SDK closes a "
               "streamed response before it is returned to the pool.")
    table.note(f"{args.calls} calls per block, {args.rounds} interleaved rounds, medians; the "
               f"answer is {len(TOKENS)} tokens (stream: {len(TOKENS) + 3} events).")
    table.device = "cpu (networked path; no model)"
    table.finish(args)


if __name__ == "__main__":
    main()
