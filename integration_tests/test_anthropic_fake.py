"""ChatModelPlug on ``anthropic:`` models, driven through the official anthropic SDK against a
loopback fake of the Messages API (the features llama-server lacks: thinking blocks, cache usage
fields, streamed tool_use). Every test checks what the SDK put on the wire and what came back."""

from __future__ import annotations

import asyncio
import base64

import pytest
from fakes.anthropic_api import API_KEY, FakeAnthropic
from fakes.server import LoopbackServer
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, Field

from langchain_modelplug import ChatModelPlug
from modelplug import BadRequestError, ConfigurationError, UnsupportedCapabilityError

SONNET = "anthropic:claude-sonnet-4-6"  # thinking_style "enabled"
OPUS_47 = "anthropic:claude-opus-4-7"  # thinking_style "adaptive"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake pixels").decode()


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="City name")


class GetTime(BaseModel):
    """Get the local time in a city."""

    city: str


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def server():
    fake = FakeAnthropic()
    srv = LoopbackServer(fake.app).start()
    yield fake, srv.url
    srv.stop()


@pytest.fixture
def fake(server, monkeypatch):
    fake, _ = server
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    fake.requests.clear()
    fake.headers.clear()
    fake._replies.clear()
    yield fake
    assert not fake._replies, "a queued reply was never requested"


@pytest.fixture
def make(server):
    _, url = server

    def make(model: str = SONNET, **kwargs) -> ChatModelPlug:
        kwargs.setdefault("max_retries", 0)
        return ChatModelPlug(model=model, base_url=url, api_key=API_KEY, **kwargs)

    return make


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def _fold(chunks):
    full = None
    for chunk in chunks:
        full = chunk if full is None else full + chunk
    return full


async def _afold(chunks):
    full = None
    async for chunk in chunks:
        full = chunk if full is None else full + chunk
    return full


# -- plain calls --------------------------------------------------------------------------------


def test_invoke_sends_system_prompt_and_returns_text_and_usage(fake, make):
    fake.reply([text("Paris is the capital of France.")], input_tokens=21, output_tokens=8)
    llm = make(temperature=0.2, top_p=0.9, stop=["\n\n"])
    msg = llm.invoke([SystemMessage("Be brief."), HumanMessage("Capital of France?")])

    sent = fake.last
    assert sent["model"] == "claude-sonnet-4-6"
    assert sent["system"] == [text("Be brief.")]
    assert sent["messages"] == [{"role": "user", "content": [text("Capital of France?")]}]
    assert sent["max_tokens"] == 4096  # the API requires one; our default
    assert (sent["temperature"], sent["top_p"], sent["stop_sequences"]) == (0.2, 0.9, ["\n\n"])
    assert "thinking" not in sent and "stream" not in sent
    headers = fake.headers[-1]
    assert API_KEY in (headers.get("x-api-key"), headers.get("authorization", "")[7:])

    assert msg.content == "Paris is the capital of France."
    assert msg.usage_metadata == {"input_tokens": 21, "output_tokens": 8, "total_tokens": 29}
    assert msg.response_metadata["finish_reason"] == "stop"
    assert msg.response_metadata["model_name"] == "claude-sonnet-4-6"
    assert msg.response_metadata["model_provider"] == "anthropic"


def test_stream_yields_text_deltas_and_usage_once(fake, make):
    answer = "One, two, three, four, five."
    fake.reply([text(answer)], input_tokens=14, output_tokens=11)
    chunks = list(make(max_tokens=100).stream("Count to five."))

    assert fake.last["stream"] is True and fake.last["max_tokens"] == 100
    assert len([c for c in chunks if c.content]) > 1  # really incremental
    full = _fold(chunks)
    assert full.content == answer
    assert full.usage_metadata == {"input_tokens": 14, "output_tokens": 11, "total_tokens": 25}
    assert full.response_metadata["finish_reason"] == "stop"


async def test_ainvoke_and_astream(fake, make):
    llm = make()
    fake.reply([text("async hello")], input_tokens=3, output_tokens=2)
    msg = await llm.ainvoke("hi")
    assert msg.content == "async hello" and msg.usage_metadata["total_tokens"] == 5

    fake.reply([text("streamed async hello")], input_tokens=3, output_tokens=4)
    full = await _afold(llm.astream("hi"))
    assert full.content == "streamed async hello"
    assert full.usage_metadata["output_tokens"] == 4
    assert fake.requests[-1]["stream"] is True and "stream" not in fake.requests[-2]


def test_one_model_from_two_event_loops(fake, make):
    # An async connection pool belongs to the loop that opened it: each loop gets its own client.
    llm = make()
    for answer in ("first loop", "second loop"):
        fake.reply([text(answer)])
        assert asyncio.run(llm.ainvoke("hi")).content == answer
    fake.reply([text("streamed in a third")])
    assert asyncio.run(_afold(llm.astream("hi"))).content == "streamed in a third"


def test_max_tokens_stop_reason_is_length(fake, make):
    fake.reply([text("Once upon a")], stop_reason="max_tokens", output_tokens=3)
    msg = make(max_tokens=3).invoke("Tell a story.")
    assert msg.response_metadata["finish_reason"] == "length"


# -- message conversion on the wire --------------------------------------------------------------


def test_conversation_with_tools_and_images_is_converted(fake, make):
    fake.reply([text("It is sunny in Paris and 14:00 in Tokyo.")])
    history = [
        SystemMessage("You are a weather bot."),
        HumanMessage(content=[
            {"type": "text", "text": "Weather here, and time in Tokyo?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/map.jpg"}},
        ]),
        AIMessage(content="Let me check.", tool_calls=[
            {"name": "GetWeather", "args": {"city": "Paris"}, "id": "toolu_01"},
            {"name": "GetTime", "args": {"city": "Tokyo"}, "id": "toolu_02"},
        ]),
        ToolMessage("sunny", tool_call_id="toolu_01"),
        ToolMessage("14:00", tool_call_id="toolu_02"),
        HumanMessage("Summarise."),
    ]
    make().bind_tools([GetWeather, GetTime]).invoke(history)

    sent = fake.last
    assert sent["system"] == [text("You are a weather bot.")]
    assert sent["messages"] == [
        {"role": "user", "content": [
            text("Weather here, and time in Tokyo?"),
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/map.jpg"}},
        ]},
        {"role": "assistant", "content": [
            text("Let me check."),
            {"type": "tool_use", "id": "toolu_01", "name": "GetWeather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_02", "name": "GetTime", "input": {"city": "Tokyo"}},
        ]},
        # Both tool results and the next question: one user turn, results first.
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_02", "content": "14:00"},
            text("Summarise."),
        ]},
    ]
    assert [t["name"] for t in sent["tools"]] == ["GetWeather", "GetTime"]
    weather = sent["tools"][0]
    assert weather["description"] == "Get the current weather in a city."
    assert weather["input_schema"]["properties"]["city"]["description"] == "City name"
    assert "tool_choice" not in sent


# -- tools --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("choice", "wire"), [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("any", {"type": "any"}),
    ("required", {"type": "any"}),
    ("GetTime", {"type": "tool", "name": "GetTime"}),
])
def test_tool_choice_on_the_wire(fake, make, choice, wire):
    fake.reply([text("ok")])
    make().bind_tools([GetWeather, GetTime], tool_choice=choice).invoke("Time in Oslo?")
    assert fake.last["tool_choice"] == wire


@pytest.mark.parametrize(("choice", "wire"), [
    (None, {"type": "auto", "disable_parallel_tool_use": True}),
    ("any", {"type": "any", "disable_parallel_tool_use": True}),
    ("none", {"type": "none"}),  # Anthropic's "none" takes no such switch
])
def test_parallel_tool_calls_false_disables_parallel_tool_use(fake, make, choice, wire):
    fake.reply([text("ok")])
    make().bind_tools([GetWeather, GetTime], tool_choice=choice,
                      parallel_tool_calls=False).invoke("Time in Oslo?")
    assert fake.last["tool_choice"] == wire
    assert "parallel_tool_calls" not in fake.last


def test_invoke_returns_tool_calls(fake, make):
    fake.reply([text("Checking."),
                {"type": "tool_use", "id": "toolu_A1", "name": "GetWeather",
                 "input": {"city": "Lima"}}], stop_reason="tool_use", output_tokens=30)
    msg = make().bind_tools([GetWeather]).invoke("Weather in Lima?")
    assert msg.content == "Checking."
    assert msg.tool_calls == [{"name": "GetWeather", "args": {"city": "Lima"}, "id": "toolu_A1",
                               "type": "tool_call"}]
    assert msg.response_metadata["finish_reason"] == "tool_calls"


def test_streamed_tool_use_assembles_tool_calls(fake, make):
    fake.reply([text("Let me look."),
                {"type": "tool_use", "id": "toolu_S1", "name": "GetWeather",
                 "input": {"city": "San Francisco"}},
                {"type": "tool_use", "id": "toolu_S2", "name": "GetTime",
                 "input": {"city": "Reykjavik"}}],
               stop_reason="tool_use", input_tokens=40, output_tokens=60)
    llm = make().bind_tools([GetWeather, GetTime], tool_choice="any")
    chunks = list(llm.stream("Weather in SF and time in Reykjavik?"))

    assert fake.last["stream"] is True and fake.last["tool_choice"] == {"type": "any"}
    fragments = [tc for c in chunks for tc in c.tool_call_chunks]
    assert len(fragments) > 4  # names first, then argument fragments
    assert {f["index"] for f in fragments} == {0, 1}
    full = _fold(chunks)
    assert full.content == "Let me look."
    assert full.tool_calls == [
        {"name": "GetWeather", "args": {"city": "San Francisco"}, "id": "toolu_S1",
         "type": "tool_call"},
        {"name": "GetTime", "args": {"city": "Reykjavik"}, "id": "toolu_S2", "type": "tool_call"},
    ]
    assert full.response_metadata["finish_reason"] == "tool_calls"
    assert full.usage_metadata == {"input_tokens": 40, "output_tokens": 60, "total_tokens": 100}


async def test_astream_tool_use(fake, make):
    fake.reply([{"type": "tool_use", "id": "toolu_X", "name": "GetTime",
                 "input": {"city": "Quito"}}], stop_reason="tool_use")
    full = await _afold(make().bind_tools([GetTime], tool_choice="GetTime").astream("Quito?"))
    assert full.tool_calls[0]["args"] == {"city": "Quito"}
    assert full.tool_calls[0]["id"] == "toolu_X"


# -- structured output --------------------------------------------------------------------------


def test_structured_output_json_schema_uses_output_config(fake, make):
    fake.reply([text('{"name": "Ada", "age": 36}')])
    person = make().with_structured_output(Person, method="json_schema").invoke("Invent one.")
    assert person == Person(name="Ada", age=36)
    fmt = fake.last["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    assert fmt["schema"]["properties"].keys() == {"name", "age"}
    assert fmt["schema"]["additionalProperties"] is False  # transformed for the API
    assert "tools" not in fake.last


def test_structured_output_function_calling_forces_the_tool(fake, make):
    fake.reply([{"type": "tool_use", "id": "toolu_P", "name": "Person",
                 "input": {"name": "Grace", "age": 85}}], stop_reason="tool_use")
    llm = make().with_structured_output(Person, method="function_calling", include_raw=True)
    out = llm.invoke("Invent one.")
    assert out["parsed"] == Person(name="Grace", age=85) and out["parsing_error"] is None
    assert fake.last["tool_choice"] == {"type": "tool", "name": "Person"}


def test_json_mode_is_a_forced_json_tool_returned_as_text(fake, make):
    fake.reply([{"type": "tool_use", "id": "toolu_J", "name": "json_response",
                 "input": {"name": "Alan", "age": 41}}], stop_reason="tool_use")
    out = make().with_structured_output(method="json_mode").invoke("A person as JSON.")
    assert out == {"name": "Alan", "age": 41}
    assert fake.last["tool_choice"] == {"type": "tool", "name": "json_response"}
    assert fake.last["tools"][-1]["name"] == "json_response"

    fake.reply([{"type": "tool_use", "id": "toolu_K", "name": "json_response",
                 "input": {"ok": True}}], stop_reason="tool_use")
    full = _fold(make().stream("JSON please", response_format={"type": "json_object"}))
    assert full.content == '{"ok": true}' and full.tool_calls == []
    assert full.response_metadata["finish_reason"] == "stop"


# -- thinking -----------------------------------------------------------------------------------

THOUGHT = "The user wants 17*23. 17*20=340, 17*3=51, so 391."


def test_enabled_thinking_request_and_reasoning(fake, make):
    fake.reply([{"type": "thinking", "thinking": THOUGHT, "signature": "sig-abc"},
                text("391")], output_tokens=50)
    msg = make(reasoning=True).invoke("17*23?")
    sent = fake.last
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["max_tokens"] > 2048  # the budget counts against max_tokens
    assert msg.content == "391"
    assert msg.additional_kwargs["reasoning_content"] == THOUGHT


def test_thinking_budget_switches_thinking_on(fake, make):
    fake.reply([{"type": "thinking", "thinking": THOUGHT, "signature": "s"}, text("391")])
    full = _fold(make(thinking_budget=3000, max_tokens=5000).stream("17*23?"))
    assert fake.last["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    assert fake.last["max_tokens"] == 5000
    assert full.content == "391"
    assert full.additional_kwargs["reasoning_content"] == THOUGHT


def test_reasoning_false_disables_thinking_explicitly(fake, make):
    fake.reply([text("391")])
    make(reasoning=False, thinking_budget=2000).invoke("17*23?")
    assert fake.last["thinking"] == {"type": "disabled"}


def test_adaptive_thinking_drops_sampling_params(fake, make):
    fake.reply([{"type": "thinking", "thinking": THOUGHT, "signature": "sig"}, text("391")])
    llm = make(OPUS_47, reasoning=True, temperature=0.3, top_p=0.8)
    full = _fold(llm.stream("17*23?"))
    sent = fake.last
    assert sent["thinking"] == {"type": "adaptive", "display": "summarized"}
    assert "temperature" not in sent and "top_p" not in sent
    assert full.additional_kwargs["reasoning_content"] == THOUGHT
    assert full.content == "391"


def test_adaptive_model_keeps_sampling_params_without_thinking(fake, make):
    fake.reply([text("hi")])
    make(OPUS_47, temperature=0.3).invoke("hi")
    assert fake.last["temperature"] == 0.3 and "thinking" not in fake.last


# A thinking turn that calls a tool, then the tool's result: the API wants the signed thinking
# block back, unmodified and first in the assistant turn, or it refuses the second request.
SIGNED = {"type": "thinking", "thinking": "Paris weather: call GetWeather.", "signature": "sig-W1"}
REDACTED = {"type": "redacted_thinking", "data": "EnCrYpTeD-reasoning"}


def _tool_turn(thinking: list[dict]) -> list[dict]:
    return [*thinking, text("Let me check."),
            {"type": "tool_use", "id": "toolu_T1", "name": "GetWeather",
             "input": {"city": "Paris"}}]


async def _answer(llm, mode: str, messages):
    """One model turn, whole (invoke/ainvoke) or folded from its stream (stream/astream)."""
    if mode == "invoke":
        return llm.invoke(messages)
    if mode == "ainvoke":
        return await llm.ainvoke(messages)
    if mode == "stream":
        return _fold(llm.stream(messages))
    return await _afold(llm.astream(messages))


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream", "astream"])
@pytest.mark.parametrize("thinking", [[SIGNED], [REDACTED, SIGNED]], ids=["signed", "redacted"])
async def test_thinking_tool_use_round_trip(fake, make, mode, thinking):
    llm = make(reasoning=True).bind_tools([GetWeather])
    question = HumanMessage("Weather in Paris?")
    fake.reply(_tool_turn(thinking), stop_reason="tool_use")
    first = await _answer(llm, mode, [question])

    assert first.additional_kwargs["thinking_blocks"] == thinking  # whole, signature included
    assert first.additional_kwargs["reasoning_content"] == SIGNED["thinking"]
    assert first.content == "Let me check."
    [call] = first.tool_calls
    assert (call["id"], call["args"]) == ("toolu_T1", {"city": "Paris"})

    fake.reply([text("It is sunny in Paris.")])
    history = [question, first, ToolMessage("sunny", tool_call_id=call["id"])]
    second = await _answer(llm, mode, history)

    # The fake enforces the API's rule, so getting here means it accepted the second request.
    assert second.content == "It is sunny in Paris."
    assert fake.last["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert fake.last["messages"][1] == {"role": "assistant", "content": _tool_turn(thinking)}
    assert fake.last["messages"][2]["content"][0]["type"] == "tool_result"


def test_fake_refuses_a_tool_turn_without_its_signed_thinking(fake, make):
    llm = make(reasoning=True).bind_tools([GetWeather])
    question = HumanMessage("Weather in Paris?")
    fake.reply(_tool_turn([SIGNED]), stop_reason="tool_use")
    first = llm.invoke([question])
    result = ToolMessage("sunny", tool_call_id="toolu_T1")

    dropped = AIMessage(content=first.content, tool_calls=first.tool_calls)
    with pytest.raises(BadRequestError, match="must start with a thinking block"):
        llm.invoke([question, dropped, result])
    tampered = AIMessage(content=first.content, tool_calls=first.tool_calls, additional_kwargs={
        "thinking_blocks": [{**SIGNED, "thinking": "Something else."}]})
    with pytest.raises(BadRequestError, match="Invalid `signature`"):
        llm.invoke([question, tampered, result])


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream_chat"])
def test_llama_index_thinking_tool_use_round_trip(fake, server, stream):
    from llama_index.core.base.llms.types import ChatMessage, ThinkingBlock
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.modelplug import ModelPlug

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"sunny in {city}"

    llm = ModelPlug(model=SONNET, base_url=server[1], api_key=API_KEY, reasoning=True,
                    max_retries=0)
    tools = [FunctionTool.from_defaults(fn=get_weather)]
    fake.reply([REDACTED, SIGNED, text("Let me check."),
                {"type": "tool_use", "id": "toolu_L1", "name": "get_weather",
                 "input": {"city": "Paris"}}], stop_reason="tool_use")
    if stream:
        *_, first = llm.stream_chat_with_tools(tools, user_msg="Weather in Paris?")
    else:
        first = llm.chat_with_tools(tools, user_msg="Weather in Paris?")
    thinking = [b for b in first.message.blocks if isinstance(b, ThinkingBlock)]
    assert [(b.content, b.additional_information) for b in thinking] == [
        (None, {"redacted_data": REDACTED["data"]}),
        (SIGNED["thinking"], {"signature": SIGNED["signature"]})]
    [call] = llm.get_tool_calls_from_response(first)

    fake.reply([text("It is sunny in Paris.")])
    history = [ChatMessage(role="user", content="Weather in Paris?"), first.message,
               ChatMessage(role="tool", content="sunny",
                           additional_kwargs={"tool_call_id": call.tool_id})]
    second = llm.chat_with_tools(tools, chat_history=history)
    assert second.message.content == "It is sunny in Paris."
    assert fake.last["messages"][1]["content"][:2] == [REDACTED, SIGNED]


def test_thinking_conflicts_fail_before_any_request(fake, make):
    with pytest.raises(ConfigurationError, match="adaptive thinking, which takes no token"):
        make(OPUS_47, thinking_budget=2048)
    with pytest.raises(ConfigurationError, match="thinking_budget must be an int"):
        make(thinking_budget=100)
    with pytest.raises(UnsupportedCapabilityError, match="forced tool use"):
        make(reasoning=True).bind_tools([GetWeather], tool_choice="GetWeather").invoke("x")
    with pytest.raises(UnsupportedCapabilityError, match="temperature 1 or unset"):
        make(reasoning=True, temperature=0).invoke("x")
    with pytest.raises(ConfigurationError, match="must exceed the thinking budget"):
        make(reasoning=True, max_tokens=1000).invoke("x")
    assert fake.requests == []


# -- prompt caching -----------------------------------------------------------------------------


def test_cache_prompt_marks_system_and_last_tool_and_reports_cache_usage(fake, make):
    llm = make(cache_prompt=True).bind_tools([GetWeather, GetTime])
    prompt = [SystemMessage("A long, stable system prompt."), HumanMessage("Weather in Oslo?")]

    fake.reply([text("first")], input_tokens=12, output_tokens=5,
               cache_creation_input_tokens=1800, cache_read_input_tokens=0)
    first = llm.invoke(prompt)
    sent = fake.last
    assert sent["system"] == [{"type": "text", "text": "A long, stable system prompt.",
                               "cache_control": {"type": "ephemeral"}}]
    assert "cache_control" not in sent["tools"][0]
    assert sent["tools"][1]["cache_control"] == {"type": "ephemeral"}
    assert all("cache_control" not in b for m in sent["messages"] for b in m["content"])
    # input_tokens is the whole input, as LangChain expects (Anthropic's excludes cache).
    assert first.usage_metadata == {
        "input_tokens": 1812, "output_tokens": 5, "total_tokens": 1817,
        "input_token_details": {"cache_read": 0, "cache_creation": 1800}}

    fake.reply([text("second")], input_tokens=12, output_tokens=6,
               cache_creation_input_tokens=0, cache_read_input_tokens=1800)
    second = _fold(llm.stream(prompt))
    assert second.usage_metadata == {
        "input_tokens": 1812, "output_tokens": 6, "total_tokens": 1818,
        "input_token_details": {"cache_read": 1800, "cache_creation": 0}}


def test_without_cache_prompt_nothing_is_marked(fake, make):
    fake.reply([text("x")])
    make().bind_tools([GetWeather]).invoke([SystemMessage("sys"), HumanMessage("q")])
    assert "cache_control" not in fake.last["tools"][0]
    assert fake.last["system"] == [text("sys")]


def test_cache_prompt_is_refused_by_other_providers():
    with pytest.raises(TypeError, match="Anthropic-only"):
        ChatModelPlug(model="ollama:qwen3:8b", cache_prompt=True)


# -- configuration ------------------------------------------------------------------------------


def test_missing_api_key_names_the_variable_before_any_request(fake, server):
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        ChatModelPlug(model=SONNET, base_url=server[1])
    assert fake.requests == []


def test_api_key_from_environment(fake, server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    fake.reply([text("env key works")])
    llm = ChatModelPlug(model=SONNET, base_url=server[1], max_retries=0)
    assert llm.invoke("hi").content == "env key works"


def test_timeout_and_max_retries_reach_the_sdk(fake, make):
    llm = make(timeout=12.5, max_retries=1)
    client = llm.backend.client
    assert client.timeout == 12.5 and client.max_retries == 1
    # No reply queued: the fake answers 500, which the SDK retries exactly max_retries times.
    with pytest.raises(Exception, match="queued no reply"):
        llm.invoke("hi")
    assert len(fake.requests) == 2


def test_secret_str_is_not_in_repr(make):
    llm = ChatModelPlug(model=SONNET, api_key="sk-very-secret", base_url="http://127.0.0.1:9")
    assert "sk-very-secret" not in repr(llm)
    assert "sk-very-secret" not in str(llm.backend.settings)
