"""What modelplug.tracing costs per model call (goal: negligible without a tracer provider).

A backend whose chat returns at once isolates the wrapper: the same call timed with tracing
off (``configure(enabled=False)``: the state without opentelemetry or a provider), with
opentelemetry installed but no provider set, and with the SDK recording to an in-memory
exporter. Run: ``.venv/bin/python bench/tracing_overhead.py``.
"""

from __future__ import annotations

import timeit

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modelplug import ChatRequest, ChatResponse, Usage, tracing
from modelplug.backends.base import Backend
from modelplug.registry import get_provider
from modelplug.spec import parse_model_string


class Instant(Backend):
    def chat(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(text="hi", usage=Usage(3, 1), finish_reason="stop", model="m")

    def stream(self, request):
        yield from ()


def per_call_us(backend: Backend, request: ChatRequest, n: int = 20000) -> float:
    return min(timeit.repeat(lambda: backend.chat(request), number=n, repeat=5)) / n * 1e6


def main() -> None:
    ref = parse_model_string("vllm:m")
    backend = Instant(ref, get_provider("vllm"), {})
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    untraced = min(timeit.repeat(lambda: Instant.chat.__wrapped__(backend, request),
                                 number=20000, repeat=5)) / 20000 * 1e6
    tracing.configure(enabled=False)
    off = per_call_us(backend, request)
    tracing.configure(enabled=True)
    no_provider = per_call_us(backend, request)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(tracer_provider=provider)
    recording = per_call_us(backend, request, n=2000)
    tracing.configure(tracer_provider=None)
    print(f"chat() unwrapped:                     {untraced:7.2f} us/call")
    print(f"tracing off:                          {off:7.2f} us/call (+{off - untraced:.2f})")
    print(f"opentelemetry, no provider:           {no_provider:7.2f} us/call "
          f"(+{no_provider - untraced:.2f})")
    print(f"SDK provider, in-memory exporter:     {recording:7.2f} us/call "
          f"(+{recording - untraced:.2f})")


if __name__ == "__main__":
    main()
