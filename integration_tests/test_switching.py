"""A conversation moving to an Anthropic or Ollama candidate, and affinity over native Ollama
hosts. Wire fakes on loopback ports, driven through the official SDKs: the Anthropic fake
refuses what the Messages API refuses (tool_use ids outside ``^[a-zA-Z0-9_-]+$``, unknown
tool_result ids, roles that do not alternate), so a candidate only answers if the payloads the
first provider wrote were rewritten or dropped for it.
"""

from __future__ import annotations

from typing import Any

import pytest
from fakes.anthropic_api import API_KEY as ANTHROPIC_KEY
from fakes.anthropic_api import FakeAnthropic, validate
from fakes.ollama_api import FakeOllama
from fakes.server import LoopbackServer, free_port
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from llama_index.core.llms import ChatMessage
from llama_index.llms.modelplug import FallbackLLM, ModelPlug

from langchain_modelplug import ChatModelPlug, FallbackChatModel
from modelplug.backends.anthropic import convert_messages, tool_use_id
from modelplug.routing import SESSION_HEADER, HealthTable

#: An id as vLLM's Kimi tool parser writes it: the Messages API refuses it as it is.
KIMI_ID = "functions.get_weather:0"


def dead_openai() -> ChatModelPlug:
    return ChatModelPlug(model="vllm:Kimi-K2", base_url=f"http://127.0.0.1:{free_port()}/v1",
                         max_retries=0, timeout=5)


def openai_conversation() -> list[Any]:
    """What an OpenAI-compatible model left in the history: reasoning, a refusal field, a
    refusal content part, and tool-call ids in its own format."""
    return [
        SystemMessage("You are terse."),
        HumanMessage("Weather in Paris?"),
        AIMessage(content="", additional_kwargs={"reasoning_content": "Need the tool.",
                                                 "refusal": None},
                  tool_calls=[{"name": "get_weather", "args": {"city": "Paris"},
                               "id": KIMI_ID}]),
        ToolMessage(content="sunny", tool_call_id=KIMI_ID),
        AIMessage(content=[{"type": "text", "text": "It is sunny."},
                           {"type": "refusal", "refusal": "No more."}],
                  additional_kwargs={"reasoning_content": "Answer."}),
        HumanMessage("And Lyon?"),
    ]


@pytest.fixture(scope="module")
def anthropic() -> Any:
    fake = FakeAnthropic()
    server = LoopbackServer(fake.app).start()
    yield fake, server.url
    server.stop()


@pytest.fixture(scope="module")
def ollama_hosts() -> Any:
    hosts = [FakeOllama() for _ in range(3)]
    servers = [LoopbackServer(h.app).start() for h in hosts]
    yield list(zip(hosts, [s.url for s in servers], strict=True))
    for server in servers:
        server.stop()


@pytest.fixture
def fresh_hosts(ollama_hosts: Any) -> Any:
    for fake, _ in ollama_hosts:
        fake.requests.clear()
        fake.headers.clear()
        fake._replies.clear()
    return ollama_hosts


def test_tool_use_ids_are_rewritten_the_same_way_wherever_they_occur() -> None:
    assert tool_use_id("toolu_01A") == "toolu_01A"  # the API's own, and OpenAI's, pass as is
    assert tool_use_id("call_abc-123") == "call_abc-123"
    rewritten = tool_use_id(KIMI_ID)
    assert rewritten != KIMI_ID and rewritten == tool_use_id(KIMI_ID)
    assert tool_use_id("functions.get_weather:1") != rewritten  # distinct ids stay distinct
    _, messages = convert_messages([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": KIMI_ID, "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": KIMI_ID, "content": "sunny"}])
    assert validate({"model": "m", "max_tokens": 8, "messages": messages}) is None
    assert messages[1]["content"][0]["id"] == messages[2]["content"][0]["tool_use_id"]


def test_an_openai_conversation_fails_over_to_anthropic(anthropic: Any) -> None:
    fake, url = anthropic
    fake.reply([{"type": "text", "text": "Cloudy."}])
    claude = ChatModelPlug(model="anthropic:claude-sonnet-4-6", api_key=ANTHROPIC_KEY,
                           base_url=url, max_retries=0)
    answer = FallbackChatModel([dead_openai(), claude], health=HealthTable()).invoke(
        openai_conversation())
    assert answer.content == "Cloudy."
    assert answer.response_metadata["fallback_model"] == "anthropic:claude-sonnet-4-6"
    sent = str(fake.last["messages"])
    assert "refusal" not in sent and "reasoning" not in sent and KIMI_ID not in sent


def test_an_anthropic_conversation_fails_over_to_native_ollama(fresh_hosts: Any) -> None:
    """Signed thinking, tool_use content blocks and cache markers (as ChatAnthropic leaves
    them) and the OpenAI leftovers are dropped for Ollama, whose API has no place for them."""
    fake, url = fresh_hosts[0]
    fake.reply("Cloudy.")
    conversation = [
        SystemMessage(content=[{"type": "text", "text": "Be terse.",
                                "cache_control": {"type": "ephemeral"}}]),
        HumanMessage(content=[{"type": "text", "text": "Weather in Paris?",
                               "cache_control": {"type": "ephemeral"}}]),
        AIMessage(content=[{"type": "thinking", "thinking": "Need the tool.",
                            "signature": "c2ln"},
                           {"type": "text", "text": "Let me check."},
                           {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
                            "input": {"city": "Paris"}}],
                  tool_calls=[{"name": "get_weather", "args": {"city": "Paris"},
                               "id": "toolu_01A"}]),
        ToolMessage(content="sunny", tool_call_id="toolu_01A"),
        *openai_conversation()[4:],
    ]
    local = ChatModelPlug(model="ollama:qwen3:8b", base_url=url)
    answer = FallbackChatModel([dead_openai(), local], health=HealthTable()).invoke(conversation)
    assert answer.content == "Cloudy."
    sent = fake.last_chat["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant",
                                         "user"]
    assert sent[2]["content"] == "Let me check."
    assert sent[2]["tool_calls"] == [{"function": {"name": "get_weather",
                                                   "arguments": {"city": "Paris"}}}]
    assert sent[3].get("tool_name") == "get_weather"
    assert sent[4]["content"] == "It is sunny."
    assert "signature" not in str(sent) and "refusal" not in str(sent)


def test_an_image_url_ollama_cannot_take_fails_over_instead_of_being_dropped(
        fresh_hosts: Any, anthropic: Any) -> None:
    """Ollama's native API takes inline images only: an http(s) image is a capability it
    lacks (UnsupportedCapabilityError), so the set moves on; the image is never dropped."""
    fake_ollama, url = fresh_hosts[0]
    fake_claude, claude_url = anthropic
    fake_claude.reply([{"type": "text", "text": "A cat."}])
    question = [HumanMessage(content=[{"type": "text", "text": "What is this?"},
                                      {"type": "image_url",
                                       "image_url": {"url": "https://example.com/cat.png"}}])]
    llm = FallbackChatModel(
        [ChatModelPlug(model="ollama:llava:7b", base_url=url),
         ChatModelPlug(model="anthropic:claude-sonnet-4-6", api_key=ANTHROPIC_KEY,
                       base_url=claude_url, max_retries=0)], health=HealthTable())
    answer = llm.invoke(question)
    assert answer.content == "A cat."
    assert [(a["candidate"], a["error"]) for a in answer.response_metadata[
        "fallback_attempts"]] == [("ollama:llava:7b", "UnsupportedCapabilityError"),
                                  ("anthropic:claude-sonnet-4-6", None)]
    assert fake_ollama.sent("/api/chat") == []  # refused before any request
    image = fake_claude.last["messages"][0]["content"][1]
    assert image == {"type": "image", "source": {"type": "url",
                                                 "url": "https://example.com/cat.png"}}


# -- affinity over native Ollama hosts --------------------------------------------------------


@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke", "astream"])
async def test_affinity_keeps_a_conversation_on_one_ollama_host_and_sends_its_key(
        fresh_hosts: Any, mode: str) -> None:
    pool = FallbackChatModel([ChatModelPlug(model="ollama:qwen3:8b", base_url=url)
                              for _, url in fresh_hosts], strategy="round_robin",
                             affinity=True, health=HealthTable())
    conversation: list[Any] = [SystemMessage("Be terse."), HumanMessage("Turn 1")]
    for turn in range(2, 6):
        for fake, _ in fresh_hosts:
            fake.reply(f"answer {turn}")
        if mode == "invoke":
            answer = pool.invoke(conversation)
        elif mode == "ainvoke":
            answer = await pool.ainvoke(conversation)
        elif mode == "stream":
            chunks = list(pool.stream(conversation))
            answer = chunks[0]
            for chunk in chunks[1:]:
                answer += chunk
        else:
            chunks = [c async for c in pool.astream(conversation)]
            answer = chunks[0]
            for chunk in chunks[1:]:
                answer += chunk
        conversation += [AIMessage(answer.content), HumanMessage(f"Turn {turn}")]
    served = [len(fake.sent("/api/chat")) for fake, _ in fresh_hosts]
    assert sorted(served) == [0, 0, 4], served  # every turn on one host
    fake = fresh_hosts[served.index(4)][0]
    keys = {h.get(SESSION_HEADER) for h in fake.headers}
    assert len(keys) == 1 and None not in keys  # one session key, sent on every turn
    for other, _ in fresh_hosts:
        other._replies.clear()


def test_llama_index_affinity_sends_the_key_to_native_ollama(fresh_hosts: Any) -> None:
    llm = FallbackLLM([ModelPlug(model="ollama:qwen3:8b", base_url=url)
                       for _, url in fresh_hosts], strategy="round_robin",
                      health=HealthTable())
    for host, _ in fresh_hosts:
        host.reply("ok")
    llm.chat([ChatMessage(role="user", content="hi")], session_id="conversation-7")
    headers = [h for host, _ in fresh_hosts for h in host.headers]
    assert [h.get(SESSION_HEADER) for h in headers] == ["conversation-7"]
    for host, _ in fresh_hosts:
        host._replies.clear()
