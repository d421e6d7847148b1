"""OpenAI-format messages and requests as Anthropic Messages API parameters (offline)."""

from __future__ import annotations

import pytest

from modelplug import ChatRequest, ConfigurationError, UnsupportedCapabilityError, create_backend
from modelplug.backends.anthropic import (
    convert_messages,
    convert_tool,
    convert_tool_choice,
    image_block,
    usage_from,
)


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def test_system_messages_become_the_system_prompt():
    system, messages = convert_messages([
        {"role": "system", "content": "Rule one."},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Rule two."}]},
    ])
    assert system == [text("Rule one."), text("Rule two.")]
    assert messages == [{"role": "user", "content": [text("hi")]}]


def test_consecutive_roles_merge_so_turns_alternate():
    _, messages = convert_messages([
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
        {"role": "assistant", "content": ""},  # empty turns are dropped, not sent
        {"role": "user", "content": "d"},
    ])
    assert messages == [
        {"role": "user", "content": [text("a"), text("b")]},
        {"role": "assistant", "content": [text("c")]},
        {"role": "user", "content": [text("d")]},
    ]


def test_tool_calls_and_results():
    _, messages = convert_messages([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "t2", "type": "function", "function": {"name": "noop", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "t2",
         "content": [{"type": "text", "text": "done"}]},
    ])
    assert messages[1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "t2", "name": "noop", "input": {}},
    ]}
    assert messages[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "t2", "content": [text("done")]},
    ]}


def test_signed_thinking_goes_back_first_and_unchanged():
    signed = [{"type": "redacted_thinking", "data": "EnC"},
              {"type": "thinking", "thinking": "Call it.", "signature": "sig"}]
    _, messages = convert_messages([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Checking.", "thinking_blocks": signed,
         "tool_calls": [{"id": "t1", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "ok"},
    ])
    assert messages[1]["content"] == [*signed, text("Checking."),
                                      {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]


def test_bad_tool_call_arguments_name_the_call():
    with pytest.raises(ConfigurationError, match=r"'t9'.*not valid JSON"):
        convert_messages([{"role": "assistant", "tool_calls": [
            {"id": "t9", "function": {"name": "f", "arguments": "{oops"}}]}])


def test_images():
    assert image_block("data:image/jpeg;base64,QUJD") == {
        "type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}}
    assert image_block("https://x.test/a.png") == {
        "type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    with pytest.raises(ConfigurationError, match="neither a base64 data URL"):
        image_block("file:///tmp/a.png")
    _, messages = convert_messages([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
        {"type": "text", "text": "what?"}]}])
    assert [b["type"] for b in messages[0]["content"]] == ["image", "text"]


def test_unknown_parts_and_roles_are_refused():
    with pytest.raises(UnsupportedCapabilityError, match="input_audio"):
        convert_messages([{"role": "user", "content": [{"type": "input_audio"}]}])
    with pytest.raises(ConfigurationError, match="'function'"):
        convert_messages([{"role": "function", "content": "x"}])


def test_tools_and_tool_choice():
    tool = {"type": "function", "function": {"name": "f", "description": "does f",
                                              "parameters": {"type": "object",
                                                             "properties": {"x": {}}}}}
    assert convert_tool(tool) == {"name": "f", "description": "does f",
                                  "input_schema": {"type": "object", "properties": {"x": {}}}}
    assert convert_tool({"type": "function", "function": {"name": "g"}})["input_schema"] == {
        "type": "object", "properties": {}}
    native = {"name": "h", "input_schema": {"type": "object"}}
    assert convert_tool(native) == native
    tools = [convert_tool(tool)]
    assert convert_tool_choice("required", tools) == {"type": "any"}
    assert convert_tool_choice("f", tools) == {"type": "tool", "name": "f"}
    assert convert_tool_choice(None, tools) is None
    with pytest.raises(ConfigurationError, match="names no tool"):
        convert_tool_choice("zzz", tools)


def test_usage_input_is_the_total_including_cache():
    usage = usage_from({"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 100,
                        "cache_creation_input_tokens": 30})
    assert (usage.input_tokens, usage.output_tokens) == (135, 2)
    assert (usage.cache_read_tokens, usage.cache_creation_tokens) == (100, 30)
    assert usage_from({"input_tokens": 5, "output_tokens": 1}).input_tokens == 5


def _params(model: str = "anthropic:claude-sonnet-4-6", **settings) -> object:
    backend = create_backend(model, api_key="k", **settings)
    return backend


def test_build_params_thinking_styles_and_cache_marks():
    request = ChatRequest(messages=[{"role": "system", "content": "S"},
                                    {"role": "user", "content": "q"}],
                          tools=[{"type": "function", "function": {"name": "a"}},
                                 {"type": "function", "function": {"name": "b"}}],
                          reasoning=True, temperature=1, top_p=0.5)
    enabled = _params(cache_prompt=True, thinking_budget=1500).build_params(request)
    assert enabled["thinking"] == {"type": "enabled", "budget_tokens": 1500}
    assert enabled["max_tokens"] > 1500
    assert enabled["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert [t.get("cache_control") for t in enabled["tools"]] == [None, {"type": "ephemeral"}]

    adaptive = _params("anthropic:claude-fable-5").build_params(request)
    assert adaptive["thinking"] == {"type": "adaptive", "display": "summarized"}
    assert "extra_body" not in adaptive  # temperature and top_p dropped
    assert "cache_control" not in adaptive["system"][-1]


def test_missing_key_is_refused_at_construction(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        create_backend("anthropic:claude-sonnet-4-6")


def test_seed_is_refused_not_dropped():
    backend = _params()
    with pytest.raises(UnsupportedCapabilityError, match="no seed"):
        backend.check(ChatRequest(messages=[{"role": "user", "content": "q"}], seed=3))
