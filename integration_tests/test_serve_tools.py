"""Our OpenAI-compatible *client* (OpenAICompatBackend under ChatModelPlug and LlamaIndex
ModelPlug) through a whole tool round trip against a real server that does tool calls:
``modelplug serve`` over the in-process SmolLM2 GGUF, on loopback.

bind_tools -> the model calls the tool -> the tool's result goes back as a ToolMessage (LangChain)
or a ``tool`` ChatMessage (LlamaIndex) -> the model answers in text; sync and streamed. The server
checks each request as OpenAI's API does (a tool message must answer a call of the assistant
message before it, a named tool_choice must name a bound tool), so a malformed round trip fails
here as it would against a real deployment. ``vllm:`` is the plain OpenAI-compatible row (no
provider quirks); the tiny model is forced to call, then told not to, so each step is
deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakes.server import LoopbackServer
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from langchain_modelplug import ChatModelPlug
from modelplug import create_backend
from modelplug.server import create_app

SERVED = "llamacpp:smollm2"
KEY = "serve-tools-key"
QUESTION = "What is the weather in Paris?"
GREEDY = {"temperature": 0, "max_tokens": 32}


def get_weather(city: str) -> str:
    """The current weather of a city."""
    return f"Sunny, 24 C in {city}"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = LoopbackServer(create_app(create_backend(SERVED), api_key=KEY)).start()
    yield f"{server.url}/v1"
    server.stop()


# -- LangChain ------------------------------------------------------------------------------------

def _merged(chunks: list) -> AIMessage:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_langchain_tool_round_trip_through_serve(url: str, stream: bool) -> None:
    llm = ChatModelPlug(model=f"vllm:{SERVED}", base_url=url, api_key=KEY, max_retries=0,
                        **GREEDY)
    question = HumanMessage(QUESTION)
    calling = llm.bind_tools([get_weather], tool_choice="get_weather")
    called = _merged(list(calling.stream([question]))) if stream else calling.invoke([question])
    (call,) = called.tool_calls
    assert call["name"] == "get_weather"
    assert isinstance(call["args"].get("city"), str)
    assert call["id"]
    assert called.response_metadata.get("finish_reason") == "tool_calls"

    result = ToolMessage(get_weather(call["args"]["city"]), tool_call_id=call["id"])
    answering = llm.bind_tools([get_weather], tool_choice="none")
    history = [question, called, result]
    answer = _merged(list(answering.stream(history))) if stream else answering.invoke(history)
    assert not answer.tool_calls
    assert isinstance(answer.content, str) and answer.content.strip()
    assert answer.usage_metadata["input_tokens"] > 0


# -- LlamaIndex -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream_chat"])
def test_llama_index_tool_round_trip_through_serve(url: str, stream: bool) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.modelplug import ModelPlug

    llm = ModelPlug(model=f"vllm:{SERVED}", base_url=url, api_key=KEY, max_retries=0, **GREEDY)
    tools = [FunctionTool.from_defaults(fn=get_weather)]
    if stream:
        *_, called = llm.stream_chat_with_tools(tools, user_msg=QUESTION, tool_required=True)
    else:
        called = llm.chat_with_tools(tools, user_msg=QUESTION, tool_required=True)
    (selection,) = llm.get_tool_calls_from_response(called)
    assert selection.tool_name == "get_weather"
    assert isinstance(selection.tool_kwargs.get("city"), str)

    output = tools[0].call(**selection.tool_kwargs)
    history = [ChatMessage(role="user", content=QUESTION), called.message,
               ChatMessage(role="tool", content=str(output),
                           additional_kwargs={"tool_call_id": selection.tool_id})]
    if stream:
        *_, answer = llm.stream_chat_with_tools(tools, chat_history=history, tool_choice="none")
    else:
        answer = llm.chat_with_tools(tools, chat_history=history, tool_choice="none")
    assert not llm.get_tool_calls_from_response(answer, error_on_no_tool_call=False)
    assert (answer.message.content or "").strip()
