"""ChatModelPlug on ``ollama:`` models through the official ollama SDK, against a loopback fake
of Ollama's native API (/api/chat non-stream and NDJSON, /api/embed, /api/show, /api/tags).
Every test checks what the SDK put on the wire and what came back."""

from __future__ import annotations

import asyncio
import base64

import pytest
from fakes.ollama_api import FakeOllama, fake_embedding
from fakes.server import LoopbackServer
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, Field

from langchain_modelplug import ChatModelPlug, ModelPlugLLM
from modelplug import ModelNotFoundError, UnsupportedCapabilityError, create_backend

QWEN = "ollama:qwen3:8b"
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
    fake = FakeOllama()
    srv = LoopbackServer(fake.app).start()
    yield fake, srv.url
    srv.stop()


@pytest.fixture
def fake(server):
    fake, _ = server
    fake.requests.clear()
    fake._replies.clear()
    yield fake
    assert not fake._replies, "a queued reply was never requested"


@pytest.fixture
def make(server):
    _, url = server

    def make(model: str = QWEN, **kwargs) -> ChatModelPlug:
        return ChatModelPlug(model=model, base_url=url, **kwargs)

    return make


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


# -- plain chat ---------------------------------------------------------------------------------


def test_invoke_request_shape_and_usage(fake, make):
    fake.reply("Paris.", prompt_eval_count=26, eval_count=3)
    llm = make(temperature=0.1, top_p=0.9, max_tokens=64, seed=7, stop=["\n"],
               model_keep_alive_seconds=300, model_kwargs={"num_ctx": 8192})
    msg = llm.invoke([SystemMessage("Be brief."), HumanMessage("Capital of France?")])

    sent = fake.last_chat
    assert sent["model"] == "qwen3:8b" and sent["stream"] is False
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Capital of France?"}]
    assert sent["options"] == {"temperature": 0.1, "top_p": 0.9, "num_predict": 64, "seed": 7,
                               "stop": ["\n"], "num_ctx": 8192}
    assert sent["keep_alive"] == 300
    # The SDK always sends a (here empty) tools list.
    assert "think" not in sent and not sent.get("tools") and "format" not in sent

    assert msg.content == "Paris."
    assert msg.usage_metadata == {"input_tokens": 26, "output_tokens": 3, "total_tokens": 29}
    assert msg.response_metadata["finish_reason"] == "stop"
    assert msg.response_metadata["model_name"] == "qwen3:8b"


def test_stream_is_ndjson_fragments_with_final_usage(fake, make):
    answer = "One, two, three, four, five."
    fake.reply(answer, prompt_eval_count=10, eval_count=12)
    chunks = list(make().stream("Count to five."))
    assert fake.last_chat["stream"] is True
    assert len([c for c in chunks if c.content]) > 2
    full = _fold(chunks)
    assert full.content == answer
    assert full.usage_metadata == {"input_tokens": 10, "output_tokens": 12, "total_tokens": 22}
    assert full.response_metadata["finish_reason"] == "stop"


def test_done_reason_length(fake, make):
    fake.reply("Once upon", done_reason="length")
    assert make(max_tokens=2).invoke("story").response_metadata["finish_reason"] == "length"


async def test_ainvoke_and_astream(fake, make):
    llm = make()
    fake.reply("async hi", eval_count=2)
    msg = await llm.ainvoke("hi")
    assert msg.content == "async hi" and msg.usage_metadata["output_tokens"] == 2
    fake.reply("streamed async hi", thinking="say hi", eval_count=4)
    full = await _afold(llm.astream("hi", reasoning=True))
    assert full.content == "streamed async hi"
    assert full.additional_kwargs["reasoning_content"] == "say hi"
    assert full.usage_metadata["output_tokens"] == 4
    assert fake.last_chat["think"] is True and fake.last_chat["stream"] is True


def test_one_model_from_two_event_loops(fake, make):
    # An async connection pool belongs to the loop that opened it: each loop gets its own client.
    llm = make()
    for answer in ("first loop", "second loop"):
        fake.reply(answer)
        assert asyncio.run(llm.ainvoke("hi")).content == answer
    fake.reply("streamed in a third")
    assert asyncio.run(_afold(llm.astream("hi"))).content == "streamed in a third"


# -- thinking -----------------------------------------------------------------------------------


def test_think_switch_and_thinking_as_reasoning(fake, make):
    thought = "17*23 = 17*20 + 17*3 = 340 + 51 = 391."
    fake.reply("391", thinking=thought)
    msg = make(reasoning=True).invoke("17*23?")
    assert fake.last_chat["think"] is True
    assert msg.content == "391" and msg.additional_kwargs["reasoning_content"] == thought

    fake.reply("391", thinking=thought)
    full = _fold(make(reasoning=True).stream("17*23?"))
    assert full.content == "391" and full.additional_kwargs["reasoning_content"] == thought

    fake.reply("391")
    msg = make(reasoning=False).invoke("17*23?")
    assert fake.last_chat["think"] is False and "reasoning_content" not in msg.additional_kwargs


# -- tools --------------------------------------------------------------------------------------


def test_tool_calls_get_generated_stable_ids(fake, make):
    calls = [{"name": "GetWeather", "arguments": {"city": "Lima"}},
             {"name": "GetTime", "arguments": {"city": "Oslo"}}]
    llm = make().bind_tools([GetWeather, GetTime])
    fake.reply("", tool_calls=calls)
    msg = llm.invoke("Weather in Lima, time in Oslo?")

    sent = fake.last_chat
    assert [t["function"]["name"] for t in sent["tools"]] == ["GetWeather", "GetTime"]
    assert sent["tools"][0]["function"]["parameters"]["properties"]["city"]["type"] == "string"
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [
        ("GetWeather", {"city": "Lima"}), ("GetTime", {"city": "Oslo"})]
    ids = [c["id"] for c in msg.tool_calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert msg.response_metadata["finish_reason"] == "tool_calls"

    fake.reply("", tool_calls=calls)
    full = _fold(llm.stream("Weather in Lima, time in Oslo?"))
    assert [c["id"] for c in full.tool_calls] == ids  # stream and invoke agree
    assert full.tool_calls[1]["args"] == {"city": "Oslo"}


def test_stream_with_thinking_text_and_tool_calls(fake, make):
    fake.reply("Let me check.", thinking="Need the weather tool.",
               tool_calls=[{"name": "GetWeather", "arguments": {"city": "San Francisco"}}],
               prompt_eval_count=50, eval_count=20)
    chunks = list(make(reasoning=True).bind_tools([GetWeather]).stream("Weather in SF?"))
    full = _fold(chunks)
    assert full.additional_kwargs["reasoning_content"] == "Need the weather tool."
    assert full.content == "Let me check."
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [
        ("GetWeather", {"city": "San Francisco"})]
    assert full.response_metadata["finish_reason"] == "tool_calls"
    assert full.usage_metadata["total_tokens"] == 70
    assert fake.last_chat["think"] is True and fake.last_chat["stream"] is True


def test_tool_round_trip_messages(fake, make):
    fake.reply("It is sunny in Lima.")
    history = [
        HumanMessage("Weather in Lima?"),
        AIMessage(content="", tool_calls=[{"name": "GetWeather", "args": {"city": "Lima"},
                                           "id": "call_1"}]),
        ToolMessage("sunny, 24C", tool_call_id="call_1"),
    ]
    make().bind_tools([GetWeather]).invoke(history)
    assert fake.last_chat["messages"][1:] == [
        {"role": "assistant",  # the SDK leaves out empty fields
         "tool_calls": [{"function": {"name": "GetWeather", "arguments": {"city": "Lima"}}}]},
        {"role": "tool", "content": "sunny, 24C", "tool_name": "GetWeather"},
    ]


def test_tool_choice_none_sends_no_tools(fake, make):
    fake.reply("No tools used.")
    make().bind_tools([GetWeather], tool_choice="none").invoke("hi")
    assert not fake.last_chat.get("tools") and "format" not in fake.last_chat


def test_forced_tool_choice_constrains_format_to_the_tool(fake, make):
    llm = make().bind_tools([GetWeather, GetTime], tool_choice="GetTime")
    fake.reply('{"city": "Quito"}')
    msg = llm.invoke("Time in Quito?")
    sent = fake.last_chat
    assert not sent.get("tools")
    assert sent["format"]["properties"].keys() == {"city"}
    assert sent["format"]["required"] == ["city"]
    assert msg.content == ""
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("GetTime", {"city": "Quito"})]
    assert msg.response_metadata["finish_reason"] == "tool_calls"

    fake.reply('{"city": "Quito"}')
    chunks = list(llm.stream("Time in Quito?"))
    assert len([c for c in chunks if c.tool_call_chunks]) > 1  # fragments, as they arrive
    full = _fold(chunks)
    assert full.content == ""
    assert [(c["name"], c["args"], c["id"]) for c in full.tool_calls] == [
        ("GetTime", {"city": "Quito"}, msg.tool_calls[0]["id"])]


def test_required_over_several_tools_uses_a_name_arguments_schema(fake, make):
    llm = make().bind_tools([GetWeather, GetTime], tool_choice="any")
    fake.reply('{"name": "GetWeather", "arguments": {"city": "Rome"}}')
    msg = llm.invoke("Rome?")
    options = fake.last_chat["format"]["anyOf"]
    assert [o["properties"]["name"]["const"] for o in options] == ["GetWeather", "GetTime"]
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("GetWeather", {"city": "Rome"})]

    fake.reply('{"name": "GetTime", "arguments": {"city": "Rome"}}')
    full = _fold(llm.stream("Rome?"))
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("GetTime", {"city": "Rome"})]


# -- structured output --------------------------------------------------------------------------


def test_structured_output_methods(fake, make):
    llm = make()
    fake.reply('{"name": "Ada", "age": 36}')
    assert llm.with_structured_output(Person).invoke("Invent one.") == Person(name="Ada", age=36)
    schema = fake.last_chat["format"]
    assert schema["type"] == "object" and schema["properties"].keys() == {"name", "age"}

    fake.reply('{"name": "Bob", "age": 5}')
    assert llm.with_structured_output(method="json_mode").invoke("JSON") == {"name": "Bob",
                                                                            "age": 5}
    assert fake.last_chat["format"] == "json"

    fake.reply('{"name": "Cy", "age": 9}')
    out = llm.with_structured_output(Person, method="function_calling").invoke("Invent one.")
    assert out == Person(name="Cy", age=9)
    assert fake.last_chat["format"]["properties"].keys() == {"name", "age"}


# -- images -------------------------------------------------------------------------------------


def test_inline_images_go_to_the_message_images_field(fake, server):
    fake.reply("A tiny test image.")
    llm = ChatModelPlug(model="ollama:llava:7b", base_url=server[1])
    llm.invoke([HumanMessage(content=[
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": PNG}},
    ])])
    assert fake.last_chat["messages"] == [{"role": "user", "content": "What is this?",
                                           "images": [PNG, PNG]}]


def test_http_image_url_is_a_value_error_before_any_request(fake, server):
    llm = ChatModelPlug(model="ollama:llava:7b", base_url=server[1])
    with pytest.raises(ValueError, match="inline images only"):
        llm.invoke([HumanMessage(content=[
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}])])
    assert fake.sent("/api/chat") == []


# -- embeddings, show, tags ---------------------------------------------------------------------


def test_embed_and_aembed(fake, server):
    backend = create_backend("ollama:nomic-embed-text:latest", base_url=server[1],
                             model_keep_alive_seconds=60)
    texts = ["hello world", "modelplug", "hello world"]
    assert backend.embed(texts) == [fake_embedding(t) for t in texts]
    assert fake.sent("/api/embed")[-1] == {"model": "nomic-embed-text:latest", "input": texts,
                                           "keep_alive": 60}


async def test_aembed(fake, server):
    backend = create_backend("ollama:nomic-embed-text:latest", base_url=server[1])
    assert await backend.aembed(["a", "b"]) == [fake_embedding("a"), fake_embedding("b")]


def test_profile_of_an_uncatalogued_model_comes_from_api_show(fake, server):
    llm = ChatModelPlug(model="ollama:llava:7b", base_url=server[1])
    assert fake.requests == []  # construction stays offline: nothing is known yet
    assert llm.profile.get("tool_calling") is None
    backend = create_backend("ollama:llava:7b", base_url=server[1])
    backend.probe()  # what the first request (or `modelplug list`) does
    profile = backend.profile()
    assert profile.image_inputs is True and profile.tool_calling is False
    assert profile.max_input_tokens == 32768
    assert fake.sent("/api/show") == [{"model": "llava:7b"}]


def test_tools_on_an_uncatalogued_model_without_them_fail_after_the_probe(fake, server):
    def magic(value: int) -> int:
        """Apply magic."""
        return value

    llm = ChatModelPlug(model="ollama:llava:7b", base_url=server[1])
    with pytest.raises(UnsupportedCapabilityError, match="does not support tool calling"):
        llm.bind_tools([magic]).invoke("hi")
    assert fake.sent("/api/show") == [{"model": "llava:7b"}]
    assert fake.sent("/api/chat") == []


def test_reasoning_on_a_model_without_thinking_fails_before_the_request(fake, server):
    llm = ChatModelPlug(model="ollama:llava:7b", base_url=server[1], reasoning=True)
    with pytest.raises(UnsupportedCapabilityError, match="does not think"):
        llm.invoke("hi")
    assert fake.sent("/api/chat") == []


def test_profile_of_a_catalogued_model_needs_no_request(fake, make):
    llm = make()
    assert llm.profile["tool_calling"] is True and llm.profile["max_input_tokens"] == 40960
    assert fake.requests == []


def test_unknown_model_error_lists_pulled_models_from_api_tags(fake, server):
    llm = ChatModelPlug(model="ollama:nope:1b", base_url=server[1])
    with pytest.raises(ModelNotFoundError, match="ollama pull nope:1b") as info:
        llm.invoke("hi")
    assert "qwen3:8b" in str(info.value) and "llava:7b" in str(info.value)
    assert fake.sent("/api/tags") == [{}]
    with pytest.raises(ModelNotFoundError, match="nope:1b"):
        list(llm.stream("hi"))


async def test_unknown_model_error_async(fake, server):
    llm = ChatModelPlug(model="ollama:nope:1b", base_url=server[1])
    with pytest.raises(ModelNotFoundError, match="qwen3:8b"):
        await llm.ainvoke("hi")


# -- configuration ------------------------------------------------------------------------------


def test_max_retries_points_to_ollama_openai():
    with pytest.raises(ValueError, match="ollama-openai"):
        ChatModelPlug(model=QWEN, max_retries=2)


def test_timeout_reaches_the_sdk_client(make):
    client = make(timeout=7.5).backend.client
    assert client._client.timeout.read == 7.5


# -- raw completion (/api/generate, raw) ----------------------------------------------------------


def test_completion_is_raw_generate_with_options(fake, server):
    llm = ModelPlugLLM(model=QWEN, base_url=server[1], temperature=0, max_tokens=12,
                       model_keep_alive_seconds=30)
    fake.reply(" Paris, the city of light.", prompt_eval_count=6, eval_count=8)
    result = llm.generate(["The capital of France is"], stop=["\n"])
    assert result.generations[0][0].text == " Paris, the city of light."
    assert result.llm_output["token_usage"] == {"prompt_tokens": 6, "completion_tokens": 8,
                                                "total_tokens": 14}
    sent = fake.sent("/api/generate")[-1]
    assert sent["prompt"] == "The capital of France is" and sent["raw"] is True
    assert sent["options"] == {"temperature": 0, "num_predict": 12, "stop": ["\n"]}
    assert sent["keep_alive"] == 30


async def test_completion_streams_sync_and_async(fake, server):
    llm = ModelPlugLLM(model=QWEN, base_url=server[1])
    fake.reply("One, two, three.")
    pieces = list(llm.stream("Count:"))
    assert len(pieces) > 1 and "".join(pieces) == "One, two, three."
    fake.reply("One, two, three.", done_reason="length")
    pieces = [p async for p in llm.astream("Count:")]
    assert len(pieces) > 1 and "".join(pieces) == "One, two, three."
