"""OpenAI-format requests as Ollama /api/chat parameters (offline)."""

from __future__ import annotations

import pytest

from modelplug import ChatRequest, ConfigurationError, create_backend
from modelplug.backends.ollama import call_id, convert_messages, forced_call, inline_image

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def _backend(**settings):
    return create_backend("ollama:qwen3:8b", base_url="http://127.0.0.1:9", **settings)


def test_inline_images_only():
    assert inline_image("data:image/png;base64,QUJD") == "QUJD"
    assert inline_image("QUJD") == "QUJD"
    with pytest.raises(ValueError, match="inline images only"):
        inline_image("http://example.com/a.png")
    with pytest.raises(ConfigurationError, match="not base64"):
        inline_image("data:image/svg+xml,<svg/>")


def test_tool_results_carry_the_tool_name():
    out = convert_messages([
        {"role": "developer", "content": "rules"},
        # Anthropic-signed thinking (a fallback's history) is not Ollama's: left out.
        {"role": "assistant", "content": None, "thinking_blocks": [
            {"type": "thinking", "thinking": "t", "signature": "s"}], "tool_calls": [
            {"id": "c1", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    ])
    assert out == [
        {"role": "system", "content": "rules"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "rain", "tool_name": "get_weather"},
    ]


def test_call_ids_are_stable_and_distinct():
    a = call_id(0, "f", {"x": 1, "y": 2})
    assert a == call_id(0, "f", {"y": 2, "x": 1})
    assert a != call_id(1, "f", {"x": 1, "y": 2}) and a.startswith("call_")


def test_forced_calls_parse_the_constrained_answer():
    call = forced_call("get_weather", '{"city": "Rome"}')
    assert (call.name, call.arguments, call.error) == ("get_weather", {"city": "Rome"}, None)
    call = forced_call(None, '{"name": "get_time", "arguments": {}}')
    assert (call.name, call.arguments) == ("get_time", {})
    assert forced_call(None, "not json").error is not None


def test_params_tool_choice_and_formats():
    backend = _backend(model_keep_alive_seconds=-1)
    ask = [{"role": "user", "content": "q"}]
    auto = backend.build_params(ChatRequest(messages=ask, tools=[WEATHER, TIME]))
    assert [t["function"]["name"] for t in auto["tools"]] == ["get_weather", "get_time"]
    assert auto["keep_alive"] == -1 and "format" not in auto

    forced = backend.build_params(ChatRequest(messages=ask, tools=[WEATHER, TIME],
                                              tool_choice="get_weather"))
    assert "tools" not in forced and forced["format"]["required"] == ["city"]
    with pytest.raises(ConfigurationError, match="names no tool"):
        backend.build_params(ChatRequest(messages=ask, tools=[WEATHER], tool_choice="nope"))

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    as_schema = backend.build_params(ChatRequest(messages=ask, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
    assert as_schema["format"] == schema
    as_json = backend.build_params(ChatRequest(messages=ask,
                                               response_format={"type": "json_object"}))
    assert as_json["format"] == "json"


def test_bad_keep_alive_is_refused_at_construction():
    with pytest.raises(ConfigurationError, match="model_keep_alive_seconds"):
        _backend(model_keep_alive_seconds="5m")
