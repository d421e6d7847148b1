"""Streams cut after their first chunks, continued on another candidate. Mostly on an
OpenAI-compatible server: the real llama-server running SmolLM2, behind a fault-injecting loopback proxy that cuts its stream after
exactly N server-sent events (fakes/proxy.py).

llama-server reads a conversation ending in an assistant message as a prefill (the answer goes
on from that text; its registry row says ``prefill="native"``), so with greedy decoding the text
a resumed stream ends with equals the greedy answer of one uncut call. Rows that cannot continue
(``prefill=None``: lmstudio here, pointed at the same server) are skipped for a continuation;
with none left the caller gets StreamInterruptedError and the partial answer. The in-process
hf backend reads a final assistant message as a prefill too (tested on the real SmolLM2).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fakes.faults import Fault, serve
from fakes.openai_api import API_KEY, FakeOpenAI
from fakes.proxy import serve_proxy
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from llama_index.core.llms import ChatMessage
from llama_index.llms.modelplug import FallbackLLM, ModelPlug

from langchain_modelplug import ChatModelPlug, FallbackChatModel
from modelplug.errors import StreamInterruptedError
from modelplug.routing import HealthTable

QUESTION = "Describe the Eiffel Tower in one sentence."
MAX_TOKENS = 64  # room for the whole answer: it ends by itself, so a continuation may too
CUT_AFTER = 10  # content chunks the caller sees before the cut


@pytest.fixture(scope="module")
def proxy(llama_server: str) -> Any:
    injector, server = serve_proxy(llama_server)
    yield injector, server.url + "/v1"
    server.stop()


def settings(provider: str, base_url: str) -> dict[str, Any]:
    # No prompt-cache reuse: a slot that served an earlier request places the cells of the
    # next elsewhere, and near-tied logits may then part from the fresh answer (greedy.py).
    return {"model": f"{provider}:smollm2", "base_url": base_url, "temperature": 0,
            "max_tokens": MAX_TOKENS, "max_retries": 0, "timeout": 120,
            "model_kwargs": {"cache_prompt": False}}


@pytest.fixture(scope="module")
def greedy(llama_server_v1: str) -> list[str]:
    """llama-server's greedy answer to QUESTION, one piece per streamed content event."""
    model = ChatModelPlug(**settings("llamaserver", llama_server_v1))
    chunks = list(model.stream([HumanMessage(QUESTION)]))
    assert chunks[-1].response_metadata["finish_reason"] == "stop"  # not cut by the budget
    pieces = [c.content for c in chunks if c.content]
    assert len(pieces) > CUT_AFTER + 3, pieces  # enough to cut after 10 and go on
    return pieces


@pytest.fixture(scope="module")
def cut_events(llama_server_v1: str) -> int:
    """How many server-sent events carry the first CUT_AFTER content pieces (llama-server
    may send a role-only event first)."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0, "max_tokens": MAX_TOKENS, "stream": True, "cache_prompt": False}
    with httpx.stream("POST", f"{llama_server_v1}/chat/completions", json=body,
                      timeout=120) as answer:
        events, content = 0, 0
        for line in answer.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events += 1
            delta = json.loads(line[6:])["choices"][0]["delta"] if json.loads(
                line[6:]).get("choices") else {}
            content += bool(delta.get("content"))
            if content == CUT_AFTER:
                return events
    raise AssertionError("the answer has fewer than CUT_AFTER content events")


def test_llama_server_continues_a_final_assistant_message(
        llama_server_v1: str, greedy: list[str]) -> None:
    """The server-side fact the resume rests on: given the first pieces as an assistant
    message, llama-server answers with the rest of the greedy answer (not the prefill again,
    not a new turn)."""
    model = ChatModelPlug(**settings("llamaserver", llama_server_v1))
    head = "".join(greedy[:CUT_AFTER])
    rest = model.invoke([HumanMessage(QUESTION), AIMessage(head)])
    assert head + rest.content == "".join(greedy)


def test_a_stream_cut_after_10_chunks_continues_on_llama_server_into_the_greedy_answer(
        proxy: Any, llama_server_v1: str, greedy: list[str], cut_events: int) -> None:
    injector, via_proxy = proxy
    injector.reset()
    injector.inject(Fault("drop", after=cut_events))
    llm = FallbackChatModel([ChatModelPlug(**settings("llamaserver", via_proxy)),
                             ChatModelPlug(**settings("llamaserver", llama_server_v1))],
                            resume_streams=True, health=HealthTable())
    chunks = list(llm.stream([HumanMessage(QUESTION)]))
    resumed = [i for i, c in enumerate(chunks) if "fallback_resumed_by" in c.response_metadata]
    assert len(resumed) == 1
    assert "".join(c.content for c in chunks[:resumed[0]]) == "".join(greedy[:CUT_AFTER])
    assert "".join(c.content for c in chunks) == "".join(greedy)  # one seamless answer
    assert len(injector.seen) == 1 and injector.seen[0][0] is not None  # it was cut


def test_a_candidate_that_cannot_continue_is_skipped_for_the_continuation(
        proxy: Any, llama_server_v1: str, greedy: list[str], cut_events: int) -> None:
    injector, via_proxy = proxy
    injector.reset()
    injector.inject(Fault("drop", after=cut_events))
    # lmstudio's row has no prefill: it would answer the partial as a finished turn.
    llm = FallbackChatModel([ChatModelPlug(**settings("llamaserver", via_proxy)),
                             ChatModelPlug(**settings("lmstudio", llama_server_v1)),
                             ChatModelPlug(**settings("llamaserver", llama_server_v1))],
                            resume_streams=True, health=HealthTable())
    chunks = list(llm.stream([HumanMessage(QUESTION)]))
    assert "".join(c.content for c in chunks) == "".join(greedy)
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    assert [(a["candidate"], a["error"]) for a in full.response_metadata[
        "fallback_resumed_attempts"]] == [
        ("llamaserver:smollm2", None), ("llamaserver:smollm2", "ProviderUnavailableError"),
        ("lmstudio:smollm2", "UnsupportedCapabilityError"), ("llamaserver:smollm2", None)]


async def test_with_no_candidate_able_to_continue_the_partial_is_handed_over(
        proxy: Any, llama_server_v1: str, greedy: list[str], cut_events: int) -> None:
    injector, via_proxy = proxy
    injector.reset()
    injector.inject(Fault("drop", after=cut_events))
    llm = FallbackChatModel([ChatModelPlug(**settings("llamaserver", via_proxy)),
                             ChatModelPlug(**settings("lmstudio", llama_server_v1))],
                            resume_streams=True, health=HealthTable())
    received = []
    with pytest.raises(StreamInterruptedError) as info:
        async for chunk in llm.astream([HumanMessage(QUESTION)]):
            received.append(chunk.content)
    assert "".join(received) == "".join(greedy[:CUT_AFTER])
    assert info.value.partial.content == "".join(greedy[:CUT_AFTER])
    assert any("lmstudio:smollm2" in note for note in info.value.__cause__.__notes__)


@pytest.mark.parametrize("aio", [False, True])
async def test_llama_index_resumes_a_cut_chat_stream_on_llama_server(
        proxy: Any, llama_server_v1: str, greedy: list[str], cut_events: int,
        aio: bool) -> None:
    injector, via_proxy = proxy
    injector.reset()
    injector.inject(Fault("drop", after=cut_events))
    llm = FallbackLLM([ModelPlug(**settings("llamaserver", via_proxy)),
                       ModelPlug(**settings("llamaserver", llama_server_v1))],
                      resume_streams=True, health=HealthTable())
    messages = [ChatMessage(role="user", content=QUESTION)]
    if aio:
        steps = [s async for s in await llm.astream_chat(messages)]
    else:
        steps = list(llm.stream_chat(messages))
    assert "".join(s.delta or "" for s in steps) == "".join(greedy)
    assert steps[-1].message.content == "".join(greedy)


@pytest.mark.parametrize("aio", [False, True])
async def test_llama_index_resumes_a_cut_completion_stream_on_llama_server(
        proxy: Any, llama_server_v1: str, greedy: list[str], cut_events: int,
        aio: bool) -> None:
    injector, via_proxy = proxy
    injector.reset()
    injector.inject(Fault("drop", after=cut_events))
    llm = FallbackLLM([ModelPlug(**settings("llamaserver", via_proxy)),
                       ModelPlug(**settings("llamaserver", llama_server_v1))],
                      resume_streams=True, health=HealthTable())
    if aio:
        steps = [s async for s in await llm.astream_complete(QUESTION)]
    else:
        steps = list(llm.stream_complete(QUESTION))
    assert "".join(s.delta or "" for s in steps) == "".join(greedy)
    assert steps[-1].text == "".join(greedy)


def test_hf_in_process_continues_a_final_assistant_message(smollm2_hf_path: Any) -> None:
    model = ChatModelPlug(model=f"hf:{smollm2_hf_path}", temperature=0, max_tokens=MAX_TOKENS)
    chunks = list(model.stream([HumanMessage(QUESTION)]))
    assert chunks[-1].response_metadata["finish_reason"] == "stop"
    pieces = [c.content for c in chunks if c.content]
    assert len(pieces) > CUT_AFTER, pieces
    head = "".join(pieces[:CUT_AFTER])
    rest = model.invoke([HumanMessage(QUESTION), AIMessage(head)])
    assert head + rest.content == "".join(pieces)
    assert model.backend.continues_prefill


# -- tool calls restart, never spliced -------------------------------------------------------


def tool_call_deltas(arguments: str) -> list[dict[str, Any]]:
    head = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": ""}}]}
    return [head] + [{"tool_calls": [{"index": 0, "function": {"arguments": arguments[i:i + 4]}}]}
                     for i in range(0, len(arguments), 4)]


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


@pytest.fixture
def cut_tool_call() -> Any:
    """An OpenAI-compatible replica whose tool-call stream is cut midway (the call's head and
    a fragment of its arguments sent)."""
    fake = FakeOpenAI()
    injector, server = serve(fake.app, "openai")
    fake.reply_stream(tool_call_deltas('{"city": "Paris"}'), finish_reason="tool_calls")
    injector.inject(Fault("drop", after=3))
    yield {"model": "vllm:some-model", "api_key": API_KEY, "base_url": server.url + "/v1",
           "max_retries": 0, "timeout": 30}
    server.stop()


def test_a_tool_call_stream_cut_midway_restarts_on_a_real_model(cut_tool_call: Any) -> None:
    """The half-sent call never reaches the caller (a candidate's tool-call chunks are held
    until its stream ends): the next candidate (the real SmolLM2 in process, tool calls by
    grammar) makes the whole call afresh."""
    llm = FallbackChatModel([ChatModelPlug(**cut_tool_call),
                             ChatModelPlug(model="llamacpp:smollm2", temperature=0,
                                           max_tokens=48)],
                            resume_streams=True, health=HealthTable())
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    chunks = list(bound.stream("What is the weather in Paris?"))
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    assert len(full.tool_calls) == 1 and full.tool_calls[0]["name"] == "get_weather"
    assert set(full.tool_calls[0]["args"]) == {"city"}
    assert full.tool_calls[0]["id"] != "call_1"  # not the cut call's head, spliced
    # Nothing of the cut call was sent, so this is a plain failover: no resume, no prefill.
    assert full.response_metadata["fallback_model"] == "llamacpp:smollm2"
    assert "fallback_resumed_by" not in full.response_metadata
    assert [a["error"] for a in full.response_metadata["fallback_attempts"]] == [
        "ProviderUnavailableError", None]


def test_llama_index_tool_call_stream_cut_midway_restarts_on_a_real_model(
        cut_tool_call: Any) -> None:
    """stream_chat_with_tools: the cut call's steps were held, so none reached the caller; the
    real SmolLM2 (in process) makes the whole call afresh."""
    from llama_index.core.tools import FunctionTool

    def weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    llm = FallbackLLM([ModelPlug(**cut_tool_call),
                       ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=48)],
                      resume_streams=True, health=HealthTable())
    steps = list(llm.stream_chat_with_tools([FunctionTool.from_defaults(weather)],
                                            user_msg="What is the weather in Paris?",
                                            tool_required=True))
    calls = llm.get_tool_calls_from_response(steps[-1])
    assert len(calls) == 1 and calls[0].tool_name == "weather"
    assert set(calls[0].tool_kwargs) == {"city"} and calls[0].tool_id != "call_1"
    # No step before the restart carried a piece of the cut call.
    assert all(not any(getattr(b, "tool_call_id", None) == "call_1" for b in s.message.blocks)
               for s in steps)
