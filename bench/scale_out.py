"""Scale out on Ray Serve: tokens/s of 1 vs 2 replicas of the in-process SmolLM2 GGUF (one
llama.cpp thread each) under 16 concurrent clients, next to what a user on one machine would
run instead (``modelplug serve`` with 1 and with 2 threads), and the per-request cost of the
Ray route (HTTP proxy, router, replica) over ``modelplug serve`` alone.

    python bench/scale_out.py [--quick] [--no-record] [--clients 16] [--requests 4]

Each side is an OpenAI-compatible server on loopback called with the official openai SDK:
Ray Serve on a local Ray instance (2 CPUs, one per replica) and ``modelplug serve`` in its own
process. Throughput: every client sends ``--requests`` greedy requests (32 new tokens, distinct
prompts) one after another; tok/s = completion tokens / wall time. Overhead: sequential
``GET /v1/models`` (no model work) and 1-token chat requests, medians.
``--quick``: 2 requests per client, 10 overhead calls.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
from _report import Table, median, parser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "integration_tests"))
from fakes.server import free_port  # noqa: E402

MODEL = "llamacpp:smollm2"
MAX_TOKENS = 32


def throughput(url: str, clients: int, requests: int) -> float:
    """Completion tokens per second of ``clients`` concurrent callers."""
    async def caller(client: openai.AsyncOpenAI, c: int) -> int:
        tokens = 0
        for r in range(requests):
            done = await client.chat.completions.create(
                model=MODEL, max_tokens=MAX_TOKENS, temperature=0,
                messages=[{"role": "user", "content": f"Tell a short story about the "
                                                      f"number {c * requests + r}."}])
            tokens += done.usage.completion_tokens
        return tokens

    async def run() -> float:
        async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0,
                                      timeout=600) as client:  # closed inside the loop
            start = time.perf_counter()
            total = sum(await asyncio.gather(*(caller(client, c) for c in range(clients))))
            return total / (time.perf_counter() - start)

    return asyncio.run(run())


def latencies(url: str, calls: int) -> tuple[float, float]:
    """Median ms of ``GET /v1/models`` and of a 1-token chat request, sequential."""
    listing, chat = [], []
    with httpx.Client(timeout=60) as http:
        body = {"model": MODEL, "max_tokens": 1, "temperature": 0,
                "messages": [{"role": "user", "content": "Hi"}]}
        for _ in range(calls + 1):  # the first warms connections and caches up
            t = time.perf_counter()
            http.get(f"{url}/models").raise_for_status()
            listing.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            http.post(f"{url}/chat/completions", json=body).raise_for_status()
            chat.append((time.perf_counter() - t) * 1000)
    return median(listing[1:]), median(chat[1:])


@contextmanager
def modelplug_serve(threads: int) -> Iterator[str]:
    """``modelplug serve`` alone, in its own process."""
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelplug.cli", "serve", MODEL, "--port", str(port),
         "--set", f"n_threads={threads}", "--set", "n_ctx=2048"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"modelplug serve did not start:\n{log.read().decode()}")
            time.sleep(0.3)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=None, help="per client (default 4; quick 2)")
    args = p.parse_args()
    requests = args.requests or (2 if args.quick else 4)
    calls = 10 if args.quick else 30

    import ray
    from ray import serve

    from modelplug.serving_ray import serve_on_ray

    table = Table(
        "Scale out on Ray Serve (bench/scale_out.py)",
        f"Tokens/s of 1 vs 2 Ray Serve replicas of SmolLM2 (1 llama.cpp thread each) under "
        f"{args.clients} concurrent clients, next to modelplug serve alone; the Ray route's "
        "per-request cost.",
        ["case", "value", "compared with", "ratio"],
    )
    rates: dict[str, float] = {}
    with modelplug_serve(threads=1) as url:
        rates["serve, 1 thread"] = throughput(url, args.clients, requests)
        plain = latencies(url, calls)
    print("modelplug serve, 1 thread:", round(rates["serve, 1 thread"], 1), "tok/s", flush=True)
    with modelplug_serve(threads=2) as url:
        rates["serve, 2 threads"] = throughput(url, args.clients, requests)
    print("modelplug serve, 2 threads:", round(rates["serve, 2 threads"], 1), "tok/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="ray-") as tmp:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
                 _temp_dir=tmp, log_to_driver=False)
        try:
            port = free_port()
            for replicas in (1, 2):  # the second run updates the same application in place
                url = serve_on_ray(MODEL, port=port, blocking=False, num_replicas=replicas,
                                   ray_actor_options={"num_cpus": 1}, n_threads=1,
                                   n_ctx=2048) + "/v1"
                rates[f"ray, {replicas} replica"] = throughput(url, args.clients, requests)
                print(f"ray, {replicas} replica(s):", round(rates[f"ray, {replicas} replica"], 1),
                      "tok/s", flush=True)
                if replicas == 1:
                    routed = latencies(url, calls)
        finally:
            serve.shutdown()
            ray.shutdown()

    one, two = rates["ray, 1 replica"], rates["ray, 2 replica"]
    table.row(f"tok/s, {args.clients} clients: Ray Serve, 2 replicas vs 1", f"{two:.1f}",
              f"{one:.1f}", f"{two / one:.2f}x")
    table.row("tok/s: Ray Serve 2 replicas vs modelplug serve, 2 threads", f"{two:.1f}",
              f"{rates['serve, 2 threads']:.1f}", f"{two / rates['serve, 2 threads']:.2f}x")
    table.row("tok/s: Ray Serve 1 replica vs modelplug serve, 1 thread", f"{one:.1f}",
              f"{rates['serve, 1 thread']:.1f}", f"{one / rates['serve, 1 thread']:.2f}x")
    table.row("ms per GET /v1/models: Ray route vs modelplug serve", f"{routed[0]:.2f}",
              f"{plain[0]:.2f}", f"+{routed[0] - plain[0]:.2f} ms")
    table.row("ms per 1-token chat: Ray route vs modelplug serve", f"{routed[1]:.1f}",
              f"{plain[1]:.1f}", f"+{routed[1] - plain[1]:.1f} ms")
    table.check("2 replicas vs 1 (one thread each, 2 cores)", f"{two / one:.2f}x", "close to 2x",
                two / one >= 1.7)
    table.check("Ray route's cost per request", f"+{routed[0] - plain[0]:.2f} ms", "reference",
                None)
    table.note(f"{args.clients} clients x {requests} requests, {MAX_TOKENS} new tokens each "
               f"(greedy); overhead: {calls} sequential calls, medians. One run per side "
               f"(not interleaved): Ray and the servers start once each. cores: {os.cpu_count()}.")
    table.finish(args)


if __name__ == "__main__":
    main()
