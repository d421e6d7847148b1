"""Serving under concurrency: N clients on one in-process model, side by side with the servers
that batch concurrent requests (llama-server -np N, transformers serve --continuous-batching).

One run, one model (SmolLM2-135M-Instruct: the Q4_1 GGUF and the transformers folder converted
from it; ``--model`` for another GGUF, ``--hf-folder`` for another folder), greedy chat requests
(temperature 0, ``--max-tokens`` 32, eight different short prompts). For N in ``--clients``
(1, 4, 8, 16) concurrent clients, each client sends its share of ``--requests`` (32) requests in
sequence, so every row of a side answers the same requests (the same prompt mix) and the N=1 row
is the serial path: the same total requests one after another. Per backend:

- llamacpp (``llamacpp:smollm2``) and hf (``hf:<folder>``), each through
  (a) ChatModelPlug ``ainvoke`` in this process (``asyncio.gather`` of N clients) and
  (b) ``modelplug serve MODEL`` as a subprocess, the openai ``AsyncOpenAI`` SDK as client,
  streaming (so time to first token is measured);
- the alternative on the same weights, with the same openai streaming client:
  llama-server ``-m <gguf> -np N`` (restarted for each N, context ``2048 * N``: one slot per
  client) for llamacpp, ``transformers serve <folder> --continuous-batching`` (one start) for hf.

Per row: total output tokens per second of wall time (output tokens from the usage the side
reports), p50/p95 time to first token (streaming sides; ``ainvoke`` returns the whole answer so
it has none), p50 latency, the CPU cores the generating process kept busy (its CPU seconds over
wall time: this process for in-process rows, the server's processes for server rows), how many
answers equal the serial row's answer to the same prompt (greedy), then N clients' tokens/s over
the same side's serial (N=1) tokens/s, and modelplug's tokens/s over the alternative's at the
same N.

Prefix reuse: one conversation of ``--turns`` (5) turns, each re-sending the whole conversation
plus a new user message, streamed; time to first token of the last turn over the first, for both
backends in-process and through their servers (llama-server: its -np 1 instance).

Every side is warmed the same way (one request after loading or starting) and stopped before the
next starts; a side that fails to start is a failed row with the reason, not a crash. Sides run
one after another (servers cannot be interleaved cheaply), N in increasing order.

Targets (issue 14; the 2-core CPU): 8 clients at least 3x the serial tokens/s for hf and 2x for
llama.cpp, and at least 0.8x transformers serve --continuous-batching and llama-server -np 8.
``--quick`` (a smoke run, a few minutes): N = 1, 4 and 4 requests per row.

    python bench/serving.py [--quick] [--no-record] [--clients 1,4,8,16] [--requests 32]
        [--max-tokens 32] [--turns 5] [--backends llamacpp,hf] [--model GGUF] [--hf-folder DIR]
        [--skip inprocess,serve,alt,hf.serve,...] [--set BACKEND.KEY=VALUE ...]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _report import Table, gpu, parser
from _server import free_port

PROMPTS = [
    "What is the capital of France?", "Name three colors.", "Say hello in French.",
    "What is the opposite of hot?", "Name a planet.", "What is water made of?",
    "How many legs does a spider have?", "Give me a word that rhymes with cat.",
]
WARMUP = "Say hi."
CONVERSATION = [
    "My name is Ada and I study the night sky. Tell me one fact about the Moon.",
    "Now tell me one fact about Mars.",
    "Which of the two is closer to the Sun?",
    "What did I say my name was?",
    "Summarise our conversation in one sentence.",
    "Thank you. Name one more planet.",
    "Which planet is the largest?",
]
API_KEY = "bench-key"
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 180
STOP_TIMEOUT_S = 20
SIDES = ("inprocess", "serve", "alt")
ALT = {"llamacpp": "llama-server", "hf": "transformers serve --continuous-batching"}
TARGET = {"llamacpp": 2.0, "hf": 3.0}

Messages = list[dict[str, str]]


@dataclass
class Answer:
    tokens: int
    latency: float
    ttft: float | None = None
    text: str = ""
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    counted: bool = False  # output tokens counted from stream chunks (no usage reported)


Call = Callable[[Messages], Awaitable[Answer]]


@dataclass
class Row:
    backend: str
    side: str  # one of SIDES
    label: str
    clients: int
    requests: int = 0
    tokens: int = 0
    wall: float = 0.0
    cpu: float | None = None
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    counted: bool = False
    error: str | None = None
    answers: list[tuple[str, str]] = field(default_factory=list)  # (prompt, answer text)

    @property
    def rate(self) -> float | None:
        return self.tokens / self.wall if self.error is None and self.wall > 0 else None


@dataclass
class Conversation:
    backend: str
    label: str
    ttft: list[float | None] = field(default_factory=list)
    prompt_tokens: list[int | None] = field(default_factory=list)
    cached_tokens: list[int | None] = field(default_factory=list)
    error: str | None = None


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1), linear between the closest ranks."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        text = "timed out"
    return f"{type(exc).__name__}: {text}"[:600]


# -- processes ----------------------------------------------------------------------------------

def _stat(pid: int | str) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()  # fields from the 3rd on (state, ppid, ...)


def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of a live process and its live descendants
    (a server may do its work in a child process), from /proc."""
    if _stat(pid) is None:
        return None
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) is not None:
            parents[int(entry)] = int(fields[1])
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when this script dies, so a killed run leaves no server."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class StartError(RuntimeError):
    pass


@dataclass
class Server:
    name: str
    url: str  # root URL, http://127.0.0.1:PORT
    proc: subprocess.Popen
    log: str
    stopped: str = ""

    def cpu(self) -> float | None:
        return proc_cpu(self.proc.pid)

    def log_text(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 2) -> str:
        """The log's last lines that say something (not a traceback's ^^^ markers)."""
        said = [ln.strip()[-200:] for ln in self.log_text().splitlines()
                if ln.strip().strip("^~ ")]
        return " | ".join(said[-lines:])


def _ready(url: str, headers: dict[str, str]) -> bool:
    import httpx

    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def server(name: str, cmd: list[str], port: int, ready_path: str,
           env: dict[str, str] | None = None, headers: dict[str, str] | None = None,
           ) -> Iterator[Server]:
    """Start ``cmd`` (which binds 127.0.0.1:``port``), wait until ``ready_path`` answers 200,
    yield it, then stop it: SIGTERM, and SIGKILL after STOP_TIMEOUT_S (the time is noted)."""
    slug = "".join(c if c.isalnum() else "-" for c in name)[:40]
    log = tempfile.NamedTemporaryFile(prefix=f"bench-serving-{slug}-", suffix=".log",
                                      delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, preexec_fn=_die_with_parent)
    srv = Server(name, f"http://127.0.0.1:{port}", proc, log.name)
    keep_log = True  # a server that failed keeps its log (the reason names it)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.poll() is None and not _ready(srv.url + ready_path, headers or {}):
            if time.monotonic() > deadline:
                raise StartError(f"{name} did not answer {ready_path} within "
                                 f"{START_TIMEOUT_S} s ({srv.tail()}; log {log.name})")
            time.sleep(0.3)
        if proc.poll() is not None:
            raise StartError(f"{name} exited with code {proc.returncode} at start "
                             f"({srv.tail()}; log {log.name})")
        yield srv
        keep_log = False  # it started and was used: its log is not needed afterwards
    finally:
        if proc.poll() is not None:  # it died on its own (at start or while in use)
            keep_log = True
            srv.stopped = f"exited by itself with code {proc.returncode} (log {log.name})"
        else:
            start = time.monotonic()
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
                srv.stopped = f"exited {time.monotonic() - start:.1f} s after SIGTERM"
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                srv.stopped = f"still running {STOP_TIMEOUT_S} s after SIGTERM: killed"
        log.close()
        if not keep_log and not srv.stopped.startswith("still"):  # a clean stop
            with contextlib.suppress(OSError):
                os.unlink(log.name)


# -- the clients --------------------------------------------------------------------------------

def openai_call(base_url: str, model: str, max_tokens: int, api_key: str = API_KEY) -> Call:
    """One streamed chat completion through the openai SDK: TTFT at the first content delta,
    output tokens from the final usage chunk (chunks counted when the server sends no usage)."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                                timeout=REQUEST_TIMEOUT_S)

    async def call(messages: Messages) -> Answer:
        start = time.perf_counter()
        ttft = None
        usage = None
        cached = None
        parts: list[str] = []
        events = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True})
        async for event in events:
            if event.usage is not None:
                usage = event.usage
            timings = (getattr(event, "model_extra", None) or {}).get("timings")
            if isinstance(timings, dict) and "cache_n" in timings:  # llama-server's own
                cached = timings["cache_n"]
            for choice in event.choices:
                if choice.delta is not None and choice.delta.content:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    parts.append(choice.delta.content)
        latency = time.perf_counter() - start
        details = getattr(usage, "prompt_tokens_details", None) if usage else None
        if details is not None and getattr(details, "cached_tokens", None) is not None:
            cached = details.cached_tokens if cached is None else cached
        if usage is not None and usage.completion_tokens is not None:
            return Answer(usage.completion_tokens, latency, ttft, "".join(parts),
                          usage.prompt_tokens, cached)
        return Answer(len(parts), latency, ttft, "".join(parts), None, cached, counted=True)

    return call


def _usage(meta: Any) -> tuple[int | None, int | None, int | None]:
    if not meta:
        return None, None, None
    details = meta.get("input_token_details") or {}
    return meta.get("output_tokens"), meta.get("input_tokens"), details.get("cache_read")


def ainvoke_call(llm: Any) -> Call:
    async def call(messages: Messages) -> Answer:
        start = time.perf_counter()
        message = await llm.ainvoke(messages)
        out, prompt, cached = _usage(message.usage_metadata)
        return Answer(out or 0, time.perf_counter() - start, None, str(message.content),
                      prompt, cached, counted=out is None)

    return call


def astream_call(llm: Any) -> Call:
    async def call(messages: Messages) -> Answer:
        start = time.perf_counter()
        ttft = None
        parts: list[str] = []
        out = prompt = cached = None
        async for chunk in llm.astream(messages):
            if chunk.content and ttft is None:
                ttft = time.perf_counter() - start
            parts.append(str(chunk.content))
            o, p, c = _usage(chunk.usage_metadata)
            out, prompt, cached = o or out, p or prompt, c or cached
        return Answer(out or 0, time.perf_counter() - start, ttft, "".join(parts), prompt,
                      cached, counted=out is None)

    return call


# -- measuring ----------------------------------------------------------------------------------

@dataclass
class Plan:
    clients: list[int]
    requests: int
    max_tokens: int
    turns: int

    def per_client(self, n: int) -> int:
        return max(1, math.ceil(self.requests / n))

    def row_timeout(self, n: int) -> float:
        return 60 + REQUEST_TIMEOUT_S * self.per_client(n)


async def measure(row: Row, call: Call, plan: Plan, cpu: Callable[[], float | None]) -> Row:
    """N clients, each sending its share of the requests in sequence (client i, request j asks
    prompt i * share + j), all started together."""
    share = plan.per_client(row.clients)
    answers: list[Answer] = []

    async def client(i: int) -> None:
        for j in range(share):
            q = PROMPTS[(i * share + j) % len(PROMPTS)]
            answer = await call([{"role": "user", "content": q}])
            answers.append(answer)
            row.answers.append((q, answer.text))

    cpu0 = cpu()
    start = time.perf_counter()
    tasks = [asyncio.ensure_future(client(i)) for i in range(row.clients)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), plan.row_timeout(row.clients))
    except Exception as exc:
        row.error = reason(exc)
        for task in tasks:  # the other clients stop too: nothing runs into the next row
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    row.wall = time.perf_counter() - start
    cpu1 = cpu()
    if cpu0 is not None and cpu1 is not None and row.wall > 0:
        row.cpu = (cpu1 - cpu0) / row.wall
    row.requests = len(answers)
    row.tokens = sum(a.tokens for a in answers)
    row.ttft = [a.ttft for a in answers if a.ttft is not None]
    row.latency = [a.latency for a in answers]
    row.counted = any(a.counted for a in answers)
    rate = f"{row.rate:7.1f} tok/s" if row.rate is not None else f"FAILED: {row.error}"
    print(f"  {row.backend:8s} {row.label:42s} N={row.clients:<3d} {row.requests:3d} requests "
          f"{row.tokens:5d} tokens {row.wall:6.1f}s {rate}", flush=True)
    return row


async def converse(conv: Conversation, call: Call, turns: int) -> Conversation:
    """One conversation: each turn re-sends everything so far plus a new user message."""
    messages: Messages = []
    try:
        for i in range(turns):
            messages.append({"role": "user", "content": CONVERSATION[i % len(CONVERSATION)]})
            answer = await asyncio.wait_for(call(messages), REQUEST_TIMEOUT_S)
            conv.ttft.append(answer.ttft)
            conv.prompt_tokens.append(answer.prompt_tokens)
            conv.cached_tokens.append(answer.cached_tokens)
            messages.append({"role": "assistant", "content": answer.text})
    except Exception as exc:
        conv.error = reason(exc)
    shown = ", ".join("-" if t is None else f"{t:.3f}" for t in conv.ttft)
    print(f"  {conv.backend:8s} {conv.label:42s} conversation TTFT per turn: {shown}"
          + (f" FAILED: {conv.error}" if conv.error else ""), flush=True)
    return conv


def failed_rows(backend: str, side: str, label: str, plan: Plan, why: str) -> list[Row]:
    print(f"  {backend:8s} {label:42s} FAILED: {why}", flush=True)
    return [Row(backend, side, label, n, error=why) for n in plan.clients]


# -- the sides ----------------------------------------------------------------------------------

@dataclass
class Run:
    plan: Plan
    rows: list[Row] = field(default_factory=list)
    convs: list[Conversation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    durations: list[str] = field(default_factory=list)


async def side_inprocess(run: Run, backend: str, ref: str, settings: dict[str, Any]) -> None:
    label = "ChatModelPlug ainvoke (in-process)"
    plan = run.plan
    try:
        from langchain_modelplug import ChatModelPlug

        llm = ChatModelPlug(model=ref, temperature=0, max_tokens=plan.max_tokens, **settings)
        await asyncio.wait_for(llm.ainvoke(WARMUP), START_TIMEOUT_S)  # loads the model
    except Exception as exc:
        run.rows += failed_rows(backend, "inprocess", label, plan, reason(exc))
        run.convs.append(Conversation(backend, "ChatModelPlug astream (in-process)",
                                      error=reason(exc)))
        return
    call = ainvoke_call(llm)
    for n in plan.clients:
        run.rows.append(await measure(Row(backend, "inprocess", label, n), call, plan,
                                      time.process_time))
    run.convs.append(await converse(Conversation(backend, "ChatModelPlug astream (in-process)"),
                                    astream_call(llm), plan.turns))
    run.notes.append(f"{backend} in-process: {threads_inprocess(backend, llm)}.")
    del llm, call
    release_inprocess()


def release_inprocess() -> None:
    """Drop the in-process models (and stop their schedulers) before the next side runs."""
    import gc

    from modelplug import weights

    with contextlib.suppress(Exception):
        weights.unload()
    gc.collect()


def threads_inprocess(backend: str, llm: Any) -> str:
    """What the in-process model runs on (private attributes: best effort)."""
    try:
        if backend == "llamacpp":
            scheduler = llm.backend._loaded().companions.get("scheduler")
            if scheduler is not None:  # the batched context's own threads
                params = scheduler.engine.ctx.params
                return (f"llama.cpp batched context, n_threads={params.n_threads}, "
                        f"n_parallel={scheduler.engine.capacity}")
            return f"llama-cpp-python n_threads={llm.backend._loaded().model.n_threads}"
        import torch

        return f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)"
    except Exception as exc:
        return f"threads unknown ({type(exc).__name__})"


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}


async def side_serve(run: Run, backend: str, ref: str, settings: dict[str, Any]) -> None:
    label = "modelplug serve + AsyncOpenAI stream"
    plan = run.plan
    port = free_port()
    cmd = [sys.executable, "-m", "modelplug.cli", "serve", ref, "--host", "127.0.0.1",
           "--port", str(port)]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    env = {**_env(), "MODELPLUG_SERVE_API_KEY": API_KEY}
    srv = None
    try:
        with server(f"modelplug serve {backend}", cmd, port, "/v1/models", env,
                    {"Authorization": f"Bearer {API_KEY}"}) as srv:
            call = openai_call(f"{srv.url}/v1", ref, plan.max_tokens)
            try:
                await asyncio.wait_for(call([{"role": "user", "content": WARMUP}]),
                                       START_TIMEOUT_S)
            except Exception as exc:
                raise StartError(f"warm-up failed: {reason(exc)} ({srv.tail()})") from exc
            for n in plan.clients:
                run.rows.append(await measure(Row(backend, "serve", label, n), call, plan,
                                              srv.cpu))
            run.convs.append(await converse(Conversation(backend, label), call, plan.turns))
    except Exception as exc:
        measured = {r.clients for r in run.rows if r.backend == backend and r.side == "serve"}
        run.rows += [r for r in failed_rows(backend, "serve", label, plan, reason(exc))
                     if r.clients not in measured]
        if not any(c.backend == backend and c.label == label for c in run.convs):
            run.convs.append(Conversation(backend, label, error=reason(exc)))
    if srv is not None and srv.stopped:
        run.notes.append(f"modelplug serve {backend}: {srv.stopped}.")


def llama_server_binary() -> Path:
    cache = Path(os.environ.get("MODELPLUG_CACHE", Path.home() / ".cache" / "modelplug"))
    return cache / "bin" / "llama-server"


async def side_llama_server(run: Run, gguf: Path) -> None:
    plan = run.plan
    binary = llama_server_binary()
    conv_done = False
    threads = ""
    for i, n in enumerate(plan.clients):
        label = f"llama-server -np {n} + AsyncOpenAI stream"
        if not binary.is_file():
            why = f"llama-server is not built ({binary}): run `make llama-server`"
            run.rows += failed_rows("llamacpp", "alt", label, Plan([n], 0, 0, 0), why)
            continue
        port = free_port()
        cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--jinja", "-np", str(n), "-c", str(2048 * n)]
        try:
            with server(f"llama-server -np {n}", cmd, port, "/health") as srv:
                call = openai_call(f"{srv.url}/v1", "smollm2", plan.max_tokens)
                try:
                    await asyncio.wait_for(call([{"role": "user", "content": WARMUP}]),
                                           START_TIMEOUT_S)
                except Exception as exc:
                    raise StartError(f"warm-up failed: {reason(exc)} ({srv.tail()})") from exc
                run.rows.append(await measure(Row("llamacpp", "alt", label, n), call, plan,
                                              srv.cpu))
                if not conv_done and (n == 1 or i == len(plan.clients) - 1):
                    run.convs.append(await converse(
                        Conversation("llamacpp", f"llama-server -np {n}"), call, plan.turns))
                    conv_done = True
                for line in srv.log_text().splitlines():
                    if "n_threads" in line and not threads:
                        threads = line.strip()[:160]
            if "by itself" in srv.stopped or "killed" in srv.stopped:
                run.notes.append(f"llama-server -np {n}: {srv.stopped}.")
        except Exception as exc:
            if not any(r.side == "alt" and r.backend == "llamacpp" and r.clients == n
                       for r in run.rows):
                run.rows += failed_rows("llamacpp", "alt", label, Plan([n], 0, 0, 0),
                                        reason(exc))
    if not conv_done:
        run.convs.append(Conversation("llamacpp", "llama-server", error="no instance answered"))
    run.notes.append("llama-server: restarted for each N with -np N and -c 2048*N (one slot per "
                     "client), --jinja, default threads"
                     + (f" (its log: `{threads}`)" if threads else "") + ".")


async def side_transformers_serve(run: Run, folder: Path) -> None:
    label = "transformers serve --continuous-batching"
    plan = run.plan
    port = free_port()
    exe = Path(sys.executable).parent / "transformers"
    cmd = [str(exe) if exe.is_file() else "transformers", "serve", str(folder),
           "--host", "127.0.0.1", "--port", str(port), "--continuous-batching"]
    srv = None
    try:
        with server("transformers serve", cmd, port, "/v1/models", _env()) as srv:
            call = openai_call(f"{srv.url}/v1", str(folder), plan.max_tokens)
            try:
                await asyncio.wait_for(call([{"role": "user", "content": WARMUP}]),
                                       START_TIMEOUT_S)
            except Exception as exc:
                raise StartError(f"warm-up failed: {reason(exc)} ({srv.tail()})") from exc
            for n in plan.clients:
                run.rows.append(await measure(Row("hf", "alt", label, n), call, plan, srv.cpu))
            run.convs.append(await converse(Conversation("hf", label), call, plan.turns))
    except Exception as exc:
        measured = {r.clients for r in run.rows if r.backend == "hf" and r.side == "alt"}
        run.rows += [r for r in failed_rows("hf", "alt", label, plan, reason(exc))
                     if r.clients not in measured]
        if not any(c.backend == "hf" and c.label == label for c in run.convs):
            run.convs.append(Conversation("hf", label, error=reason(exc)))
    if srv is not None and srv.stopped:
        run.notes.append(f"transformers serve: {srv.stopped}.")


# -- the tables ---------------------------------------------------------------------------------

def _row(run: Run, backend: str, side: str, n: int) -> Row | None:
    return next((r for r in run.rows if r.backend == backend and r.side == side
                 and r.clients == n), None)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def same_answers(row: Row, serial: Row | None) -> str:
    """How many of the row's answers equal the serial row's first answer to the same prompt."""
    if serial is None or serial.error is not None:
        return "-"
    first: dict[str, str] = {}
    for q, text in serial.answers:
        first.setdefault(q, text)
    pairs = [(q, text) for q, text in row.answers if q in first]
    return f"{sum(first[q] == text for q, text in pairs)}/{len(pairs)}"


def first_difference(row: Row, serial: Row | None) -> str | None:
    """The first of the row's answers that differs from the serial answer, both shortened."""
    if serial is None or serial.error is not None or row is serial:
        return None
    first: dict[str, str] = {}
    for q, text in serial.answers:
        first.setdefault(q, text)
    for q, text in row.answers:
        if q in first and first[q] != text:
            return f"{q!r}: serial {first[q][:70]!r}, here {text[:70]!r}"
    return None


def _s(value: float | None) -> Any:
    return "-" if value is None else value


def tables(run: Run, backends: list[str], args: Any, elapsed: float) -> tuple[Table, Table]:
    plan = run.plan
    table = Table(
        "Serving under concurrency (bench/serving.py)",
        f"N concurrent clients on one model (SmolLM2-135M-Instruct unless noted), greedy chat, "
        f"max_tokens={plan.max_tokens}, {plan.requests} requests per row (each client sends "
        f"its share in sequence; N=1 is the serial path); output tokens per second of wall "
        "time, from the usage each side reports.",
        ["backend", "side", "N", "requests", "out tokens", "tok/s", "TTFT p50 s", "TTFT p95 s",
         "latency p50 s", "cores busy", "= serial answers", "vs serial", "modelplug / alt"],
    )
    failures: dict[tuple[str, str, str], list[int]] = {}
    for backend in backends:
        for side in SIDES:
            for n in plan.clients:
                row = _row(run, backend, side, n)
                if row is None:
                    continue
                serial = _row(run, backend, side, 1)
                alt = _row(run, backend, "alt", n)
                if row.error is not None:
                    table.row(backend, row.label, n, row.requests, row.tokens,
                              "failed", "-", "-", "-", "-", "-", "-", "-")
                    failures.setdefault((backend, row.label, row.error), []).append(n)
                    continue
                vs_alt = _ratio(row.rate, alt.rate if alt else None) if side != "alt" else ""
                if (diff := first_difference(row, serial)) is not None:
                    table.note(f"{backend} {row.label} N={n}: an answer differs from serial: "
                               f"{diff}")
                table.row(backend, row.label, n, row.requests,
                          f"{row.tokens}{'*' if row.counted else ''}", row.rate,
                          _s(pct(row.ttft, 0.5)), _s(pct(row.ttft, 0.95)),
                          _s(pct(row.latency, 0.5)), _s(row.cpu), same_answers(row, serial),
                          _ratio(row.rate, serial.rate if serial else None), vs_alt)
    for (backend, label, error), ns in failures.items():
        table.note(f"{backend} {label} failed (N={', '.join(map(str, ns))}): {error}")
    for backend in backends:
        want = TARGET[backend]
        for side in ("inprocess", "serve"):
            serial, r8 = _row(run, backend, side, 1), _row(run, backend, side, 8)
            alt8 = _row(run, backend, "alt", 8)
            name = {"inprocess": "in-process ainvoke", "serve": "modelplug serve"}[side]
            if r8 is None or serial is None:
                table.check(f"{backend} {name}: 8 clients / serial", "not measured",
                            f">= {want:g}x", None)
            elif r8.rate is None or serial.rate is None:
                table.check(f"{backend} {name}: 8 clients / serial", "failed", f">= {want:g}x",
                            False)
            else:
                ratio = r8.rate / serial.rate
                table.check(f"{backend} {name}: 8 clients / serial", f"{ratio:.2f}x",
                            f">= {want:g}x", ratio >= want)
            what = f"{backend} {name}: 8 clients / {ALT[backend]}" + (
                " -np 8" if backend == "llamacpp" else "")
            if r8 is None or alt8 is None:
                table.check(what, "not measured", ">= 0.8x", None)
            elif alt8.rate is None:
                table.check(what, "alternative failed", ">= 0.8x", None)
            elif r8.rate is None:
                table.check(what, "failed", ">= 0.8x", False)
            else:
                ratio = r8.rate / alt8.rate
                table.check(what, f"{ratio:.2f}x", ">= 0.8x", ratio >= 0.8)
    table.note("TTFT: time to the first content delta of a streamed answer; the in-process rows "
               "use ainvoke (the whole answer at once), so they have none. latency: request "
               "start to its last token.")
    table.note("cores busy: CPU seconds of the generating process over the row's wall time "
               "(in-process rows: this whole process, clients included; server rows: the "
               "server process only).")
    if any(r.counted for r in run.rows):
        table.note("*: the side sent no usage; output tokens are its content chunks.")
    table.note("= serial answers: answers equal to the serial row's first answer to the same "
               "prompt (greedy: concurrency should not change them, within the numerics a batch "
               "allows).")
    table.note("vs serial: this row's tok/s over the same side's N=1 row (the same requests one "
               "after another). modelplug / alt: over " + " and ".join(
                   f"{ALT[b]} ({b})" for b in backends) + " at the same N.")
    table.note(f"one warm-up request per side (after loading or starting); sides one after "
               f"another, N increasing; the whole run took {elapsed / 60:.1f} min ("
               + ", ".join(run.durations) + ").")
    table.notes += run.notes

    turns = plan.turns
    prefix = Table(
        "Prefix reuse across the turns of a conversation (bench/serving.py)",
        f"One conversation of {turns} turns, each re-sending the whole conversation plus a new "
        f"user message, streamed, greedy, max_tokens={plan.max_tokens}: time to first token of "
        f"turn {turns} over turn 1 (near 1x when the shared prefix's KV cache is reused).",
        ["backend", "side", "turn 1 prompt tokens", "turn 1 TTFT s",
         f"turn {turns} prompt tokens", f"turn {turns} cached tokens", f"turn {turns} TTFT s",
         f"turn {turns} / turn 1", "TTFT per turn s"],
    )
    for conv in run.convs:
        if conv.error is not None or len(conv.ttft) < turns:
            prefix.row(conv.backend, conv.label, "-", "-", "-", "-", "-", "failed", "-")
            prefix.note(f"{conv.backend} {conv.label} failed: {conv.error}")
            continue
        first, last = conv.ttft[0], conv.ttft[-1]
        prefix.row(conv.backend, conv.label, _s(conv.prompt_tokens[0]), _s(first),
                   _s(conv.prompt_tokens[-1]), _s(conv.cached_tokens[-1]), _s(last),
                   _ratio(last, first),
                   ", ".join("-" if t is None else f"{t:.3f}" for t in conv.ttft))
    prefix.note("cached tokens: what the side reports (usage prompt_tokens_details.cached_tokens, "
                "llama-server's timings.cache_n, or input_token_details.cache_read); - when it "
                "reports none.")
    device = gpu()
    table.device = prefix.device = "cpu" if device is None else f"cuda available: {device}"
    return table, prefix


# -- main ---------------------------------------------------------------------------------------

def hf_folder(gguf: Path) -> Path:
    """The transformers folder of ``gguf``, converted once per machine (integration_tests)."""
    from _report import ROOT

    sys.path.insert(0, str(ROOT / "integration_tests"))
    from hf_model import HF_FOLDER_NAME, convert_gguf_to_hf

    name = HF_FOLDER_NAME if gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" else f"{gguf.stem}-hf"
    return convert_gguf_to_hf(gguf, gguf.parent / name)


def parse_set(pairs: list[str], backends: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {b: {} for b in ("llamacpp", "hf")}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        backend, dot, name = key.partition(".")
        if not sep or not dot or backend not in out:
            raise SystemExit(f"--set {pair!r}: expected BACKEND.KEY=VALUE with BACKEND one of "
                             "llamacpp, hf (e.g. --set llamacpp.n_threads=2)")
        try:
            out[backend][name] = json.loads(value)
        except ValueError:
            out[backend][name] = value
    return out


async def run_all(run: Run, backends: list[str], skip: set[str], gguf: Path,
                  folder: Path | None, refs: dict[str, str],
                  settings: dict[str, dict[str, Any]]) -> None:
    for backend in backends:
        print(f"{backend}:", flush=True)
        wanted = [s for s in SIDES if s not in skip and f"{backend}.{s}" not in skip]
        if backend == "hf" and folder is None:
            why = "no transformers folder (conversion failed; see above)"
            for side in wanted:
                label = ALT["hf"] if side == "alt" else side
                run.rows += failed_rows("hf", side, label, run.plan, why)
            continue
        for side in wanted:
            start = time.perf_counter()
            if side == "inprocess":
                await side_inprocess(run, backend, refs[backend], settings[backend])
            elif side == "serve":
                await side_serve(run, backend, refs[backend], settings[backend])
            elif backend == "llamacpp":
                await side_llama_server(run, gguf)
            else:
                await side_transformers_serve(run, folder)  # type: ignore[arg-type]
            took = time.perf_counter() - start
            run.durations.append(f"{backend} {side} {took:.0f} s")
            print(f"  ({backend} {side}: {took:.0f} s, loading and starting included)", flush=True)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--clients", default=None, help="comma-separated N (default 1,4,8,16)")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per row, shared among the N clients (default 32)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--turns", type=int, default=5, help="turns of the prefix-reuse conversation")
    p.add_argument("--backends", default="llamacpp,hf")
    p.add_argument("--model", type=Path, default=None,
                   help="a GGUF file (default: the packaged SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--hf-folder", type=Path, default=None,
                   help="a transformers folder (default: converted from the GGUF)")
    p.add_argument("--skip", default="", help="sides to leave out: inprocess, serve, alt, or "
                   "BACKEND.SIDE (e.g. hf.alt)")
    p.add_argument("--set", dest="settings", action="append", default=[],
                   metavar="BACKEND.KEY=VALUE",
                   help="a model setting for the in-process and served model of BACKEND "
                        "(repeatable), e.g. llamacpp.n_threads=2")
    args = p.parse_args()
    clients = args.clients or ("1,4" if args.quick else "1,4,8,16")
    plan = Plan(sorted({int(c) for c in clients.split(",") if c.strip()}),
                args.requests or (4 if args.quick else 32), args.max_tokens, args.turns)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in TARGET:
            raise SystemExit(f"--backends: {b!r} is not one of llamacpp, hf")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    settings = parse_set(args.settings, backends)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from modelplug.local import models_dir

    default_gguf = models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf = (args.model or default_gguf).resolve()
    if not gguf.is_file():
        raise SystemExit(f"{gguf} is missing: run `make fetch-model` first (or pass --model).")
    refs = {"llamacpp": "llamacpp:smollm2" if gguf == default_gguf.resolve()
            else f"llamacpp:{gguf}"}
    run = Run(plan)
    folder: Path | None = None
    if "hf" in backends:
        try:
            folder = (args.hf_folder or hf_folder(gguf)).resolve()
            refs["hf"] = f"hf:{folder}"
        except Exception as exc:
            print(f"hf: converting {gguf.name} failed: {reason(exc)}", flush=True)
    model_name = gguf.name + (f" / {folder.name}" if folder else "")
    run.notes.append(f"model: {model_name}; clients {plan.clients}; {plan.requests} requests per "
                     f"row; max_tokens={plan.max_tokens}; prompts: {len(PROMPTS)}.")
    uneven = [n for n in plan.clients if n * plan.per_client(n) != plan.requests]
    if uneven:
        run.notes.append(f"--requests {plan.requests} is not a multiple of every N (rounded up "
                         f"to N * ceil(requests / N) for N={uneven}): those rows ask a different "
                         "prompt mix, so their tok/s compare less well.")

    start = time.perf_counter()
    asyncio.run(run_all(run, backends, skip, gguf, folder, refs, settings))
    elapsed = time.perf_counter() - start

    table, prefix = tables(run, backends, args, elapsed)
    table.finish(args)
    prefix.finish(args)
    for what, measured, wanted, ok in table.checks:
        verdict = {True: "MET", False: "MISS", None: "NOT MEASURED"}[ok]
        print(f"{verdict:12s} {what}: {measured} (wanted {wanted})")
    print(f"(the run took {elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main()
