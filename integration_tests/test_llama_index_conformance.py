"""A conformance suite for LlamaIndex LLM adapters (LlamaIndex has no upstream one).

What llama-index-core relies on, checked on real models for every backend configuration:

- the 8 methods (chat, complete, their streams, the async twins) return the documented types;
  ``astream_*`` are coroutines returning async generators; streams are cumulative (``message``
  / ``text`` hold everything so far, ``delta`` the new text); sync and async agree;
- usage in ``additional_kwargs`` and ``raw["usage"]``, as TokenCountingHandler reads it;
- tools: a forced call with parsed arguments as ToolCallBlocks, a round trip through a tool
  result, streamed calls readable on every step, named tool_choice, single-call trimming;
- structured output through native json_schema: structured_predict and its async / streaming
  twins, as_structured_llm;
- metadata: cheap (no weights, no network), consistent with the settings;
- inputs are never mutated; bad settings fail at construction with the fix in the message.

Add a backend by adding a row to ``CONFIGS``.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    ImageBlock,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.modelplug import ModelPlug
from llama_index.llms.modelplug._convert import stream_steps, to_openai_messages
from pydantic import BaseModel

from modelplug import ChatChunk, ToolCallDelta, UnsupportedCapabilityError, Usage
from modelplug.weights import loaded_keys

PARIS = "What is the capital of France? Answer in one sentence."
MAGIC = "What is the value of magic_function(3)?"
MAX_TOKENS = 24


def magic_function(input: int) -> int:
    """Applies a magic function to an input."""
    return input + 2


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny in {city}"


class City(BaseModel):
    """A city and the country it is in."""

    name: str
    country: str


def _llamacpp(request: pytest.FixtureRequest) -> ModelPlug:
    return ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=MAX_TOKENS)


def _hf(request: pytest.FixtureRequest) -> ModelPlug:
    path = request.getfixturevalue("smollm2_hf_path")  # the same model, as a transformers folder
    return ModelPlug(model=f"hf:{path}", temperature=0, max_tokens=MAX_TOKENS)


def _llamaserver(request: pytest.FixtureRequest) -> ModelPlug:
    return ModelPlug(model="llamaserver:smollm2", base_url=request.getfixturevalue(
        "llama_server_v1"), temperature=0, max_tokens=MAX_TOKENS)


#: name -> (factory, what the configuration cannot do, with the reason)
CONFIGS: dict[str, tuple[Callable[[pytest.FixtureRequest], ModelPlug], dict[str, str]]] = {
    "llamacpp": (_llamacpp, {}),
    "hf": (_hf, {}),
    "llamaserver": (_llamaserver, {
        "tools": "llama-server (llama.cpp vendored by llama-cpp-python 0.3.36) builds its "
                 "tool-call grammar and parser only for chat templates that render tool calls; "
                 "SmolLM2-135M's renders none, its /props says so, and the backend refuses a "
                 "tool request before sending it (UnsupportedCapabilityError)",
    }),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def config(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def llm(config: str, request: pytest.FixtureRequest) -> ModelPlug:
    return CONFIGS[config][0](request)


@pytest.fixture
def needs(config: str, request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Mark the test as an expected (strict) failure where the configuration lacks a feature:
    the backend refuses the request up front (UnsupportedCapabilityError)."""

    def need(feature: str) -> None:
        reason = CONFIGS[config][1].get(feature)
        if reason:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason,
                                                  raises=UnsupportedCapabilityError))

    return need


def _paris() -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, content=PARIS)]


def _tools() -> list[FunctionTool]:
    return [FunctionTool.from_defaults(fn=magic_function),
            FunctionTool.from_defaults(fn=get_weather)]


def _check_usage(response: ChatResponse | CompletionResponse) -> None:
    usage = response.additional_kwargs
    assert usage["prompt_tokens"] > 5 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert response.raw["usage"] == {k: usage[k] for k in response.raw["usage"]}


# -- metadata and construction --------------------------------------------------------------------


def test_metadata_is_sane(llm: ModelPlug, config: str) -> None:
    meta = llm.metadata
    assert isinstance(meta, LLMMetadata)
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.num_output == MAX_TOKENS
    assert meta.context_window > meta.num_output
    assert meta.model_name == llm.model and llm.model.startswith(f"{config}:")
    assert ModelPlug(model=llm.model, base_url=llm.base_url,
                     context_window=1000).metadata.context_window == 1000


def test_metadata_is_cheap() -> None:
    # In-process: the GGUF header only, never the weights (a load key no other test uses).
    llm = ModelPlug(model="llamacpp:smollm2", n_ctx=1536)
    assert llm.metadata.context_window == 1536
    assert not any(1536 in key for key in loaded_keys())
    # Networked: no request (nothing listens on a port we just freed).
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    remote = ModelPlug(model="llamaserver:anything", base_url=f"http://127.0.0.1:{port}/v1")
    assert remote.metadata.model_name == "llamaserver:anything"


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(TypeError, match="n_ctxx"):
        ModelPlug(model="llamacpp:smollm2", n_ctxx=512)
    with pytest.raises(TypeError, match=r"in-process.*timeout"):
        ModelPlug(model="llamacpp:smollm2", timeout=5)
    with pytest.raises(TypeError, match=r"in-process.*max_retries"):
        ModelPlug(model="llamacpp:smollm2", max_retries=2)


def test_secrets_stay_out_of_repr_and_dumps() -> None:
    llm = ModelPlug(model="llamaserver:x", base_url="http://127.0.0.1:9/v1", api_key="sk-secret")
    assert "sk-secret" not in repr(llm)
    assert "sk-secret" not in json.dumps(llm.to_dict(), default=str)


# -- the 8 methods ------------------------------------------------------------------------------


def test_async_methods_are_coroutines_returning_async_generators(llm: ModelPlug) -> None:
    for name in ("achat", "acomplete", "astream_chat", "astream_complete"):
        assert inspect.iscoroutinefunction(getattr(llm, name)), name


def test_chat_and_achat_agree(llm: ModelPlug) -> None:
    import asyncio

    sync = llm.chat(_paris())
    asyn = asyncio.run(llm.achat(_paris()))
    for response in (sync, asyn):
        assert isinstance(response, ChatResponse)
        assert response.message.role == MessageRole.ASSISTANT
        assert "Paris" in response.message.content
        assert response.raw["finish_reason"] in ("stop", "length")
        _check_usage(response)
    assert sync.message.content == asyn.message.content


async def test_stream_chat_and_astream_chat_agree(llm: ModelPlug) -> None:
    whole = (await llm.achat(_paris())).message.content
    steps = list(llm.stream_chat(_paris()))
    gen = await llm.astream_chat(_paris())
    assert inspect.isasyncgen(gen)
    asteps = [step async for step in gen]
    for run in (steps, asteps):
        assert len(run) > 1 and all(isinstance(s, ChatResponse) for s in run)
        text = ""
        for step in run:  # cumulative message, incremental delta
            text += step.delta or ""
            assert step.message.content == text
        assert text == whole
        _check_usage(run[-1])


async def test_complete_family_agrees(llm: ModelPlug) -> None:
    whole = llm.complete(PARIS)
    awhole = await llm.acomplete(PARIS)
    assert isinstance(whole, CompletionResponse) and "Paris" in whole.text
    assert awhole.text == whole.text
    _check_usage(whole)
    steps = list(llm.stream_complete(PARIS))
    gen = await llm.astream_complete(PARIS)
    assert inspect.isasyncgen(gen)
    asteps = [step async for step in gen]
    for run in (steps, asteps):
        assert all(isinstance(s, CompletionResponse) for s in run)
        assert "".join(s.delta or "" for s in run) == run[-1].text == whole.text


def test_token_counting_handler_reads_usage(llm: ModelPlug) -> None:
    counter = TokenCountingHandler()
    counted = llm.model_copy()
    counted.callback_manager = CallbackManager([counter])
    response = counted.chat(_paris())
    assert counter.prompt_llm_token_count == response.additional_kwargs["prompt_tokens"]
    assert counter.completion_llm_token_count == response.additional_kwargs["completion_tokens"]


def test_inputs_are_not_mutated(llm: ModelPlug) -> None:
    messages = [ChatMessage(role="system", content="Be brief."), *_paris()]
    before = copy.deepcopy(messages)
    llm.chat(messages)
    list(llm.stream_chat(messages))
    assert messages == before


# -- tools ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", [{"tool_required": True}, {"tool_choice": "magic_function"},
                                 {"tool_choice": "required"}])
def test_forced_tool_call(llm: ModelPlug, needs: Callable[[str], None], how: dict) -> None:
    needs("tools")
    history: list[ChatMessage] = []
    response = llm.chat_with_tools(_tools(), user_msg=MAGIC, chat_history=history, **how)
    assert history == []  # never appended to
    [call] = llm.get_tool_calls_from_response(response)
    if "tool_choice" in how and how["tool_choice"] != "required":
        assert call.tool_name == "magic_function"
    if call.tool_name == "magic_function":
        assert call.tool_kwargs == {"input": 3}
    assert call.tool_id
    [block] = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert block.tool_call_id == call.tool_id
    assert response.raw["finish_reason"] == "tool_calls"


def test_named_tool_choice_wins(llm: ModelPlug, needs: Callable[[str], None]) -> None:
    needs("tools")
    response = llm.chat_with_tools(_tools(), user_msg=MAGIC, tool_choice="get_weather")
    [call] = llm.get_tool_calls_from_response(response)
    assert call.tool_name == "get_weather" and isinstance(call.tool_kwargs["city"], str)


def test_unknown_tool_choice_names_the_tools(llm: ModelPlug) -> None:
    with pytest.raises(ValueError, match="magic_function"):
        llm.chat_with_tools(_tools(), user_msg=MAGIC, tool_choice="nope")


async def test_tool_round_trip(llm: ModelPlug, needs: Callable[[str], None]) -> None:
    needs("tools")
    tools = _tools()
    user = ChatMessage(role="user", content=MAGIC)
    first = await llm.achat_with_tools(tools, user_msg=user, tool_choice="magic_function")
    [call] = llm.get_tool_calls_from_response(first)
    output = tools[0].call(**call.tool_kwargs)
    assert output.content == "5"
    history = [user, first.message,
               ChatMessage(role="tool", content=output.content,
                           additional_kwargs={"tool_call_id": call.tool_id})]
    before = copy.deepcopy(history)
    second = await llm.achat_with_tools(tools, chat_history=history, tool_choice="none")
    assert history == before
    assert llm.get_tool_calls_from_response(second, error_on_no_tool_call=False) == []
    assert second.message.content.strip()
    with pytest.raises(ValueError, match="tool_required"):
        llm.get_tool_calls_from_response(second)


async def test_streamed_tool_calls(llm: ModelPlug, needs: Callable[[str], None]) -> None:
    needs("tools")
    steps = list(llm.stream_chat_with_tools(_tools(), user_msg=MAGIC, tool_required=True))
    gen = await llm.astream_chat_with_tools(_tools(), user_msg=MAGIC, tool_required=True)
    asteps = [step async for step in gen]
    for run in (steps, asteps):
        for step in run:  # readable on every step, as FunctionAgent reads it
            llm.get_tool_calls_from_response(step, error_on_no_tool_call=False)
        [call] = llm.get_tool_calls_from_response(run[-1])
        if call.tool_name == "magic_function":
            assert call.tool_kwargs == {"input": 3}
        _check_usage(run[-1])


def test_single_tool_call_unless_parallel_allowed(llm: ModelPlug) -> None:
    blocks = [TextBlock(text=""),
              ToolCallBlock(tool_call_id="a", tool_name="magic_function", tool_kwargs={"input": 1}),
              ToolCallBlock(tool_call_id="b", tool_name="magic_function", tool_kwargs={"input": 2})]
    response = ChatResponse(message=ChatMessage(role="assistant", blocks=blocks))
    one = llm._validate_chat_with_tools_response(response, [], allow_parallel_tool_calls=False)
    assert [c.tool_id for c in llm.get_tool_calls_from_response(one)] == ["a"]
    both = llm._validate_chat_with_tools_response(response, [], allow_parallel_tool_calls=True)
    assert [c.tool_id for c in llm.get_tool_calls_from_response(both)] == ["a", "b"]
    assert len(response.message.blocks) == 3  # the original response is left alone


def test_streamed_partial_arguments_and_reasoning_are_collected() -> None:
    chunks = [
        ChatChunk(reasoning="Let me think. "),
        ChatChunk(reasoning="Done."),
        ChatChunk(tool_calls=[ToolCallDelta(0, id="c1", name="magic_function",
                                            arguments='{"inp')]),
        ChatChunk(tool_calls=[ToolCallDelta(0, arguments='ut": 3}')]),
        ChatChunk(finish_reason="tool_calls", usage=Usage(10, 5)),
    ]
    steps = list(stream_steps(chunks, "test"))
    assert steps[0].additional_kwargs["thinking_delta"] == "Let me think. "
    assert [b.content for b in steps[1].message.blocks if isinstance(b, ThinkingBlock)] == [
        "Let me think. Done."]
    partial = [b for b in steps[2].message.blocks if isinstance(b, ToolCallBlock)]
    assert partial[0].tool_kwargs == '{"inp'  # not yet JSON: kept as the raw string
    final = [b for b in steps[-1].message.blocks if isinstance(b, ToolCallBlock)]
    assert final[0].tool_kwargs == {"input": 3} and final[0].tool_call_id == "c1"
    assert steps[-1].additional_kwargs["total_tokens"] == 15


# -- messages in ----------------------------------------------------------------------------------


def test_messages_convert_once() -> None:
    png = ImageBlock(image=b"\x89PNG\r\n\x1a\n" + b"\0" * 16, image_mimetype="image/png")
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", blocks=[TextBlock(text="What is this?"), png,
                                         ImageBlock(url="https://example.com/cat.jpg")]),
        ChatMessage(role="assistant", blocks=[
            ThinkingBlock(content="hidden"), TextBlock(text=""),
            ToolCallBlock(tool_call_id="c1", tool_name="f", tool_kwargs={"x": 1})]),
        ChatMessage(role="tool", content="42", additional_kwargs={"tool_call_id": "c1"}),
    ]
    system, user, assistant, tool = to_openai_messages(messages)
    assert system == {"role": "system", "content": "Be brief."}
    assert user["content"][0] == {"type": "text", "text": "What is this?"}
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert user["content"][2] == {"type": "image_url",
                                  "image_url": {"url": "https://example.com/cat.jpg"}}
    assert assistant == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}
    assert tool == {"role": "tool", "content": "42", "tool_call_id": "c1"}


def test_images_to_a_text_only_model_fail_before_sending() -> None:
    llm = ModelPlug(model="llamacpp:smollm2", max_tokens=4)
    image = ImageBlock(image=b"\x89PNG\r\n\x1a\n" + b"\0" * 16, image_mimetype="image/png")
    with pytest.raises(UnsupportedCapabilityError, match="vision"):
        llm.chat([ChatMessage(role="user", blocks=[TextBlock(text="Describe."), image])])


# -- structured output ----------------------------------------------------------------------------

PROMPT = PromptTemplate("{text}\nExtract the city and its country.")
TEXT = "Paris is the capital of France."


@pytest.fixture(scope="module")
def roomy(llm: ModelPlug) -> ModelPlug:
    """The same model with room for a whole JSON object (servers may pretty-print it)."""
    return llm.model_copy(update={"max_tokens": 96})


async def test_structured_predict_family(roomy: ModelPlug) -> None:
    llm = roomy
    sync = llm.structured_predict(City, PROMPT, text=TEXT)
    asyn = await llm.astructured_predict(City, PROMPT, text=TEXT)
    assert isinstance(sync, City) and sync == asyn
    streamed: list[Any] = list(llm.stream_structured_predict(City, PROMPT, text=TEXT))
    assert streamed and streamed[-1] == sync
    agen = await llm.astream_structured_predict(City, PROMPT, text=TEXT)
    astreamed = [item async for item in agen]
    assert astreamed[-1] == sync


def test_structured_llm(roomy: ModelPlug) -> None:
    llm = roomy
    structured = llm.as_structured_llm(City)
    response = structured.chat([ChatMessage(role="user", content=f"{TEXT} Extract the city.")])
    assert isinstance(response.raw, City)
    assert json.loads(response.message.content) == response.raw.model_dump()
