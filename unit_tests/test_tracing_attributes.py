"""modelplug.tracing without a model: what it imports, and the attributes it derives from any
usage and request (the spans themselves: integration_tests/test_tracing.py)."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from modelplug import ChatRequest, Usage, tracing
from modelplug.tracing import _request_attributes, _usage_attributes

counts = st.integers(min_value=0, max_value=10**9)


def test_modelplug_imports_no_opentelemetry_until_a_call() -> None:
    code = ("import sys, modelplug; from modelplug import create_backend; "
            "create_backend('vllm:m'); print('opentelemetry' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_turned_off_there_is_no_tracer() -> None:
    tracing.configure(enabled=False)
    try:
        assert tracing.tracer() is None
    finally:
        tracing.configure(enabled=True)


@given(counts, counts, counts, counts, counts, counts, counts)
def test_usage_attributes(inp: int, out: int, read: int, created: int, reasoning: int,
                          audio_in: int, audio_out: int) -> None:
    usage = Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=read,
                  cache_creation_tokens=created, reasoning_tokens=reasoning,
                  audio_input_tokens=audio_in, audio_output_tokens=audio_out)
    attrs = _usage_attributes(usage)
    assert attrs["gen_ai.usage.input_tokens"] == inp
    assert attrs["gen_ai.usage.output_tokens"] == out
    details = {"gen_ai.usage.cache_read.input_tokens": read,
               "gen_ai.usage.cache_creation.input_tokens": created,
               "gen_ai.usage.reasoning.output_tokens": reasoning,
               "gen_ai.usage.audio.input_tokens": audio_in,
               "gen_ai.usage.audio.output_tokens": audio_out}
    # A detail is there when the provider counted some, with that count; nothing else is.
    assert {k: v for k, v in attrs.items() if k in details} == \
        {k: v for k, v in details.items() if v}
    assert set(attrs) <= {"gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", *details}


maybe_number = st.none() | st.floats(min_value=0, max_value=2, allow_nan=False)


@given(maybe_number, maybe_number, st.none() | st.integers(1, 10**6),
       st.none() | st.integers(0, 2**31), st.none() | st.lists(st.text(min_size=1), max_size=3),
       st.sampled_from([None, {"type": "json_object"}, {"type": "text"},
                        {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}]))
def test_request_attributes(temperature, top_p, max_tokens, seed, stop, response_format) -> None:
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}], temperature=temperature,
                          top_p=top_p, max_tokens=max_tokens, seed=seed, stop=stop,
                          response_format=response_format)
    attrs = _request_attributes(request)
    given_values = {"gen_ai.request.temperature": temperature, "gen_ai.request.top_p": top_p,
                    "gen_ai.request.max_tokens": max_tokens, "gen_ai.request.seed": seed}
    for name, value in given_values.items():
        assert attrs.get(name) == value  # absent (None) when the request leaves it unset
    assert attrs.get("gen_ai.request.stop_sequences") == (stop or None)
    is_json = (response_format or {}).get("type") in ("json_object", "json_schema")
    assert attrs.get("gen_ai.output.type") == ("json" if is_json else None)


def test_provider_names_follow_the_conventions() -> None:
    assert [tracing.provider_name(p) for p in ("openai", "anthropic", "gemini", "xai",
                                               "mistral", "llamacpp", "vllm")] == \
        ["openai", "anthropic", "gcp.gemini", "x_ai", "mistral_ai", "llamacpp", "vllm"]
