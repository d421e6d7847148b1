"""Routing: health memory (a circuit breaker per endpoint) and pools of equivalent replicas.

Replicas are OpenAI wire fakes behind fault injectors on loopback ports, driven through the
official SDK; the last-resort candidate is the real in-process SmolLM2. Health tables get a
fake clock, so cooldowns pass without sleeping and nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from fakes.faults import Fault, FaultInjector, serve, status
from fakes.openai_api import API_KEY, FakeOpenAI
from fakes.server import free_port
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from llama_index.core.llms import ChatMessage
from llama_index.llms.modelplug import FallbackLLM, ModelPlug

from langchain_modelplug import ChatModelPlug, FallbackChatModel
from modelplug import FallbackExhaustedError, ProviderUnavailableError
from modelplug.errors import StreamInterruptedError
from modelplug.routing import SESSION_HEADER, HealthTable, backend_endpoint, health_table

#: The client timeout of a replica that hangs (seconds); the hang lasts four times as long.
TIMEOUT = 0.3


class Clock:
    """A monotonic clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Replica:
    """One OpenAI-compatible deployment: an echoing fake behind a fault injector."""

    def __init__(self) -> None:
        self.fake = FakeOpenAI()
        self.fake.echo = True
        self.injector: FaultInjector
        self.injector, self.server = serve(self.fake.app, "openai")

    @property
    def url(self) -> str:
        return self.server.url + "/v1"

    def settings(self, timeout: float = 10.0) -> dict[str, Any]:
        return {"model": "openai:gpt-4o-mini", "api_key": API_KEY, "base_url": self.url,
                "timeout": timeout, "max_retries": 0}

    def model(self, timeout: float = 10.0) -> ChatModelPlug:
        return ChatModelPlug(**self.settings(timeout))

    @property
    def calls(self) -> int:
        return len(self.injector.seen)

    def session_headers(self) -> list[str | None]:
        return [h.get(SESSION_HEADER) for h in self.fake.headers]


@pytest.fixture(scope="module")
def replicas() -> Any:
    made = [Replica() for _ in range(3)]
    made[0].model().invoke("warm up")  # SDK import and first connect stay out of the cases
    yield made
    for replica in made:
        replica.server.stop()


@pytest.fixture
def fresh(replicas: list[Replica]) -> list[Replica]:
    for replica in replicas:
        replica.injector.reset()
        replica.fake.requests.clear()
        replica.fake.headers.clear()
        replica.fake._replies.clear()  # a reply an earlier test queued but never used
    return replicas


@pytest.fixture(scope="module")
def local() -> ChatModelPlug:
    return ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=4)


def attempts(message: Any) -> list[tuple[str, str | None]]:
    return [(a["candidate"], a["error"]) for a in message.response_metadata["fallback_attempts"]]


# -- health memory ---------------------------------------------------------------------------------


def test_a_hanging_primary_costs_one_timeout_over_20_calls_then_is_probed(
        fresh: list[Replica], local: ChatModelPlug) -> None:
    primary = fresh[0]
    primary.injector.choose = lambda body: Fault("hang", seconds=TIMEOUT * 4)
    clock = Clock()
    table = HealthTable(cooldown=30, clock=clock)
    llm = FallbackChatModel([primary.model(timeout=TIMEOUT), local], health=table)
    answers = [llm.invoke(f"Say {i}.") for i in range(20)]

    assert primary.calls == 1  # one timeout, not twenty
    assert {a.response_metadata["fallback_model"] for a in answers} == {"llamacpp:smollm2"}
    assert attempts(answers[0]) == [("openai:gpt-4o-mini", "ProviderTimeoutError"),
                                    ("llamacpp:smollm2", None)]
    for answer in answers[1:]:
        assert attempts(answer) == [("openai:gpt-4o-mini", "CircuitOpenError"),
                                    ("llamacpp:smollm2", None)]
        assert "fallback_failures" not in answer.response_metadata  # skipped, never failed
    endpoint = backend_endpoint(llm.models[0].backend)
    [row] = [r for r in table.table() if r["endpoint"] == str(endpoint)]
    assert row["state"] == "open"
    assert row["retry_in_s"] == 30 and "ProviderTimeoutError" in row["last_error"]

    clock.now += 29  # still cooling down
    llm.invoke("Again.")
    assert primary.calls == 1
    clock.now += 2  # the cooldown has passed: the next call probes the primary, now healthy
    primary.injector.choose = None
    probed = llm.invoke("Are you back?")
    assert primary.calls == 2
    assert probed.response_metadata["fallback_model"] == "openai:gpt-4o-mini"
    assert probed.content == "echo: Are you back?"
    assert table.state(endpoint) == "closed"
    assert llm.invoke("And now?").response_metadata["fallback_model"] == "openai:gpt-4o-mini"


def test_retry_after_sets_the_cooldown(fresh: list[Replica]) -> None:
    primary, spare = fresh[0], fresh[1]
    primary.injector.inject(status(429, retry_after=7))
    clock = Clock()
    table = HealthTable(cooldown=1, clock=clock)  # Retry-After overrides the default cooldown
    llm = FallbackChatModel([primary.model(), spare.model()], health=table)
    first = llm.invoke("one")
    assert attempts(first)[0] == ("openai:gpt-4o-mini", "RateLimitError")
    clock.now += 2  # past the default cooldown, inside Retry-After
    llm.invoke("two")
    assert primary.calls == 1 and spare.calls == 2
    clock.now += 5.5  # 7.5 s after the 429
    llm.invoke("three")
    assert primary.calls == 2 and spare.calls == 2
    assert table.state(backend_endpoint(llm.models[0].backend)) == "closed"


def test_a_failed_probe_reopens_for_twice_the_cooldown(fresh: list[Replica]) -> None:
    primary, spare = fresh[0], fresh[1]
    primary.injector.inject(status(503), status(503))
    clock = Clock()
    table = HealthTable(cooldown=10, clock=clock)
    llm = FallbackChatModel([primary.model(), spare.model()], health=table)
    llm.invoke("one")
    clock.now += 10
    llm.invoke("two")  # the probe, which fails again
    assert primary.calls == 2
    [row] = [r for r in table.table() if primary.server.url in r["endpoint"]]
    assert row["state"] == "open" and row["retry_in_s"] == 20
    clock.now += 15
    llm.invoke("three")
    assert primary.calls == 2
    clock.now += 5
    assert llm.invoke("four").response_metadata["fallback_model"] == "openai:gpt-4o-mini"


def test_a_threshold_above_one_tolerates_single_failures(fresh: list[Replica]) -> None:
    primary, spare = fresh[0], fresh[1]
    primary.injector.inject(status(500), None, status(500), status(500))
    table = HealthTable(threshold=2, clock=Clock())
    llm = FallbackChatModel([primary.model(), spare.model()], health=table)
    for text in ("one", "two", "three"):  # 500, answer, 500: never two in a row yet
        llm.invoke(text)
    assert table.state(backend_endpoint(llm.models[0].backend)) == "closed"
    llm.invoke("four")  # the second 500 in a row opens it
    assert table.state(backend_endpoint(llm.models[0].backend)) == "open"
    llm.invoke("five")
    assert primary.calls == 4


def test_every_set_in_the_process_shares_the_health_of_an_endpoint(
        fresh: list[Replica]) -> None:
    primary, spare = fresh[0], fresh[1]
    primary.injector.inject(status(503))
    FallbackChatModel([primary.model(), spare.model()]).invoke("one")
    # Another set, another ChatModelPlug object, the same endpoint: skipped at once.
    other = FallbackChatModel([primary.model(timeout=5.0), spare.model()])
    answer = other.invoke("two")
    assert primary.calls == 1 and answer.response_metadata["fallback_model"]
    assert attempts(answer)[0][1] == "CircuitOpenError"
    [row] = [r for r in health_table() if primary.server.url in r["endpoint"]]
    assert row["state"] == "open" and row["failures"] == 1
    # A different key of the same deployment is a different endpoint (pools of keys).
    keyed = ChatModelPlug(**{**primary.settings(), "api_key": "sk-other"})
    assert backend_endpoint(keyed.backend) != backend_endpoint(primary.model().backend)
    assert "sk-other" not in str(backend_endpoint(keyed.backend))


def test_an_open_candidate_is_still_tried_when_every_other_fails(
        fresh: list[Replica]) -> None:
    primary = fresh[0]
    dead = ChatModelPlug(model="openai:gpt-4o-mini", api_key=API_KEY, max_retries=0,
                         base_url=f"http://127.0.0.1:{free_port()}/v1")
    table = HealthTable(clock=Clock())
    primary.injector.inject(status(503))
    llm = FallbackChatModel([primary.model(), dead], health=table)
    with pytest.raises(FallbackExhaustedError):  # 503, then refused
        llm.invoke("one")
    answer = llm.invoke("two")  # both open: the primary, now healthy, is tried last
    assert answer.content == "echo: two"
    assert attempts(answer) == [("openai:gpt-4o-mini", "CircuitOpenError"),
                                ("openai:gpt-4o-mini", "CircuitOpenError"),
                                ("openai:gpt-4o-mini", None)]


def test_half_open_admits_one_probe_among_many_threads() -> None:
    clock = Clock()
    table = HealthTable(cooldown=5, clock=clock)
    endpoint = backend_endpoint(ChatModelPlug(model="openai:gpt-4o-mini", api_key="k").backend)
    table.start(endpoint)
    table.finish(endpoint, TimeoutError("slow"))
    clock.now += 5
    admitted: list[bool] = []
    barrier = threading.Barrier(16)

    def caller() -> None:
        barrier.wait()
        admitted.append(table.admit(endpoint))

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted.count(True) == 1
    table.start(endpoint)
    table.finish(endpoint, None)
    assert table.state(endpoint) == "closed" and table.admit(endpoint)


# -- pools ------------------------------------------------------------------------------------------


def pool(replicas: list[Replica], **kwargs: Any) -> FallbackChatModel:
    return FallbackChatModel([r.model() for r in replicas], health=HealthTable(), **kwargs)


async def test_round_robin_spreads_300_concurrent_calls_evenly(fresh: list[Replica]) -> None:
    llm = pool(fresh, strategy="round_robin")
    answers = await asyncio.gather(*(llm.ainvoke(f"q{i}") for i in range(300)))
    assert [a.content for a in answers] == [f"echo: q{i}" for i in range(300)]
    counts = [r.calls for r in fresh]
    assert sum(counts) == 300
    assert all(85 <= c <= 115 for c in counts), counts


async def test_least_outstanding_sends_more_to_the_faster_replica(
        fresh: list[Replica]) -> None:
    fast, slow = fresh[0], fresh[1]
    # The slow replica sends each answer in 64-byte pieces 30 ms apart (about 0.2 s).
    slow.injector.choose = lambda body: Fault("trickle", size=64, seconds=0.03)
    llm = pool([fast, slow], strategy="least_outstanding")
    queue = list(range(160))

    async def client() -> None:
        while queue:
            i = queue.pop()
            assert (await llm.ainvoke(f"q{i}")).content == f"echo: q{i}"

    await asyncio.gather(*(client() for _ in range(8)))
    assert fast.calls + slow.calls == 160
    assert fast.calls > 2 * slow.calls, (fast.calls, slow.calls)


def test_affinity_keeps_a_five_turn_conversation_on_one_replica(
        fresh: list[Replica]) -> None:
    llm = pool(fresh, strategy="round_robin", affinity=True)
    homes = []
    for opening in ("My name is Ada.", "My name is Grace.", "My name is Edsger."):
        messages: list[Any] = [SystemMessage("You are terse."), HumanMessage(opening)]
        before = [r.calls for r in fresh]
        for turn in range(5):
            answer = llm.invoke(messages)
            messages += [answer, HumanMessage(f"Turn {turn + 2}.")]
        served = [r.calls - b for r, b in zip(fresh, before, strict=True)]
        assert sorted(served) == [0, 0, 5], served  # every turn on one replica
        home = served.index(5)
        homes.append(home)
        headers = fresh[home].session_headers()[-5:]
        assert len(set(headers)) == 1 and headers[0]  # one key, sent on as x-session-id
    # Without affinity the same pool rotates.
    plain = pool(fresh, strategy="round_robin")
    before = [r.calls for r in fresh]
    for _ in range(3):
        plain.invoke("hi")
    assert [r.calls - b for r, b in zip(fresh, before, strict=True)] == [1, 1, 1]


async def test_a_caller_given_session_pins_calls_and_is_sent_as_a_header(
        fresh: list[Replica]) -> None:
    llm = pool(fresh, strategy="round_robin")
    for text in ("one", "two", "three", "four"):
        await llm.ainvoke(text, session_id="user-42")
    served = [r for r in fresh if r.calls]
    assert len(served) == 1 and served[0].calls == 4
    assert served[0].session_headers() == ["user-42"] * 4


def test_affinity_moves_only_when_its_replica_is_down(fresh: list[Replica]) -> None:
    table = HealthTable(clock=Clock())
    llm = FallbackChatModel([r.model() for r in fresh], strategy="round_robin",
                            health=table)
    llm.invoke("hi", session_id="s")
    [home] = [r for r in fresh if r.calls]
    home.injector.choose = lambda body: status(503)
    answer = llm.invoke("hi", session_id="s")  # fails over within the pool
    assert answer.content == "echo: hi"
    [moved] = [r for r in fresh if r is not home and r.calls]
    llm.invoke("hi", session_id="s")  # while home cools down, the session stays on the next
    assert moved.calls == 2 and home.calls == 2


def test_a_pool_binds_tools_and_is_a_candidate_of_a_fallback(
        fresh: list[Replica], local: ChatModelPlug) -> None:
    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    replicas = pool(fresh[:2], strategy="round_robin")
    bound = replicas.bind_tools([get_weather])
    for text in ("one", "two"):
        bound.invoke(text)
    assert [r.fake.requests[-1]["tools"][0]["function"]["name"] for r in fresh[:2]] == [
        "get_weather", "get_weather"]
    # A pool whose replicas are all down hands the call to the next candidate of a fallback.
    for replica in fresh[:2]:
        replica.injector.choose = lambda body: status(503)
    outer = FallbackChatModel([replicas, local], health=HealthTable())
    answer = outer.invoke("Say hi.")
    assert answer.response_metadata["fallback_model"] == "llamacpp:smollm2"
    assert isinstance(answer, AIMessage)


def test_llama_index_pool_round_robin_and_affinity(fresh: list[Replica]) -> None:
    llm = FallbackLLM([ModelPlug(**r.settings()) for r in fresh], strategy="round_robin",
                      health=HealthTable())
    for i in range(6):
        llm.chat([ChatMessage(role="user", content=f"q{i}")])
    assert [r.calls for r in fresh] == [2, 2, 2]
    pinned = FallbackLLM([ModelPlug(**r.settings()) for r in fresh], strategy="round_robin",
                         affinity=True, health=HealthTable())
    messages = [ChatMessage(role="user", content="My name is Ada.")]
    before = [r.calls for r in fresh]
    for turn in range(5):
        response = pinned.chat(messages)
        assert response.additional_kwargs["fallback_attempts"][-1]["error"] is None
        messages += [response.message, ChatMessage(role="user", content=f"Turn {turn}.")]
    served = [r.calls - b for r, b in zip(fresh, before, strict=True)]
    assert sorted(served) == [0, 0, 5]
    assert len(set(fresh[served.index(5)].session_headers()[-5:])) == 1


def test_strategy_and_health_are_checked() -> None:
    with pytest.raises(ValueError, match="strategy must be one of 'priority', 'round_robin'"):
        FallbackChatModel(["llamacpp:smollm2"], strategy="random")
    with pytest.raises(TypeError, match="health must be True"):
        FallbackChatModel(["llamacpp:smollm2"], health="yes")


# -- streams that fail after their first chunk --------------------------------------------------

QUESTION = "Describe the Eiffel Tower in one sentence."


@pytest.fixture(scope="module")
def greedy_pieces() -> list[str]:
    """SmolLM2's greedy answer to QUESTION, chunk by chunk (one token each)."""
    model = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=64)
    pieces = [c.content for c in model.stream([HumanMessage(QUESTION)])]
    assert len([p for p in pieces if p]) > 12, pieces  # enough to cut after 10
    return [p for p in pieces if p]


def cut_after_ten(replica: Replica, pieces: list[str]) -> None:
    """The replica streams ``pieces`` and dies after the tenth (the drop counts body
    messages: two precede the first piece)."""
    replica.fake.reply_stream([{"role": "assistant", "content": ""}]
                              + [{"content": p} for p in pieces])
    replica.injector.inject(Fault("drop", after=12))


def test_a_stream_cut_after_10_chunks_continues_into_the_greedy_answer(
        fresh: list[Replica], greedy_pieces: list[str]) -> None:
    primary = fresh[0]
    cut_after_ten(primary, greedy_pieces)
    local = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=64)
    llm = FallbackChatModel([primary.model(), local], resume_streams=True,
                            health=HealthTable())
    chunks = list(llm.stream([HumanMessage(QUESTION)]))
    resumed = [i for i, c in enumerate(chunks) if "fallback_resumed_by" in c.response_metadata]
    assert len(resumed) == 1
    assert "".join(c.content for c in chunks[:resumed[0]]) == "".join(greedy_pieces[:10])
    assert "".join(c.content for c in chunks) == "".join(greedy_pieces)  # one seamless answer
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    assert full.response_metadata["fallback_model"] == "openai:gpt-4o-mini"
    assert full.response_metadata["fallback_resumed_by"] == "llamacpp:smollm2"
    assert [(a["candidate"], a["error"]) for a in full.response_metadata[
        "fallback_resumed_attempts"]] == [("openai:gpt-4o-mini", None),
                                          ("openai:gpt-4o-mini", "ProviderUnavailableError"),
                                          ("llamacpp:smollm2", None)]


async def test_without_resume_a_cut_stream_raises_with_its_partial_message(
        fresh: list[Replica], greedy_pieces: list[str]) -> None:
    primary, spare = fresh[0], fresh[1]
    cut_after_ten(primary, greedy_pieces)
    llm = FallbackChatModel([primary.model(), spare.model()], health=HealthTable())
    received = []
    with pytest.raises(StreamInterruptedError) as info:
        async for chunk in llm.astream([HumanMessage(QUESTION)]):
            received.append(chunk.content)
    assert "".join(received) == "".join(greedy_pieces[:10])
    assert info.value.partial.content == "".join(greedy_pieces[:10])
    assert info.value.candidate == "openai:gpt-4o-mini"
    assert info.value.usage is None  # this provider reports usage only at the end
    assert isinstance(info.value, ProviderUnavailableError) and info.value.__cause__
    assert spare.calls == 0  # nothing replayed elsewhere


def tool_call_deltas(arguments: str) -> list[dict[str, Any]]:
    head = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": ""}}]}
    return [head] + [{"tool_calls": [{"index": 0, "function": {"arguments": arguments[i:i + 4]}}]}
                     for i in range(0, len(arguments), 4)]


@pytest.mark.parametrize("resume", [True, False])
def test_a_tool_call_stream_cut_midway_restarts_cleanly_or_raises(
        fresh: list[Replica], resume: bool) -> None:
    primary, spare = fresh[0], fresh[1]
    primary.fake.reply_stream(tool_call_deltas('{"city": "Paris"}'), finish_reason="tool_calls")
    primary.injector.inject(Fault("drop", after=3))  # the call's head and a fragment
    spare.fake.reply_stream(tool_call_deltas('{"city": "Lyon"}'), finish_reason="tool_calls")

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    llm = FallbackChatModel([primary.model(), spare.model()], resume_streams=resume,
                            health=HealthTable()).bind_tools([get_weather])
    if not resume:
        with pytest.raises(StreamInterruptedError) as info:
            list(llm.stream("Weather in Paris?"))
        assert info.value.partial.tool_call_chunks  # the half-sent call, handed over
        return
    chunks = list(llm.stream("Weather in Paris?"))
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    # Nothing of the cut call reached the caller: one whole call, from the spare.
    assert full.tool_calls == [{"name": "get_weather", "args": {"city": "Lyon"},
                                "id": "call_1", "type": "tool_call"}]
    assert spare.calls == 1


def test_llama_index_cut_stream_raises_with_its_partial_response(
        fresh: list[Replica], greedy_pieces: list[str]) -> None:
    primary, spare = fresh[0], fresh[1]
    cut_after_ten(primary, greedy_pieces)
    llm = FallbackLLM([ModelPlug(**primary.settings()), ModelPlug(**spare.settings())],
                      health=HealthTable())
    received = []
    with pytest.raises(StreamInterruptedError) as info:
        for step in llm.stream_chat([ChatMessage(role="user", content=QUESTION)]):
            received.append(step.delta)
    assert "".join(received) == "".join(greedy_pieces[:10])
    assert info.value.partial.message.content == "".join(greedy_pieces[:10])
    assert info.value.candidate == "openai:gpt-4o-mini" and spare.calls == 0


# -- switching providers mid-conversation ------------------------------------------------------------


def test_an_anthropic_conversation_fails_over_to_an_openai_compatible_candidate(
        fresh: list[Replica]) -> None:
    """Cache markers and signed thinking (as ChatAnthropic's content blocks and as our own
    thinking_blocks) are Anthropic's alone: the OpenAI fake refuses them as the API does, so
    the candidate only answers if they were dropped for it."""
    openai_side = fresh[0]
    anthropic_down = ChatModelPlug(model="anthropic:claude-sonnet-4-6", api_key="sk-ant-test",
                                   base_url=f"http://127.0.0.1:{free_port()}", max_retries=0)
    conversation = [
        SystemMessage(content=[
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Long shared instructions.",
             "cache_control": {"type": "ephemeral"}}]),
        HumanMessage(content=[{"type": "text", "text": "Weather in Paris?",
                               "cache_control": {"type": "ephemeral"}},
                              {"type": "image_url", "image_url": {
                                  "url": "data:image/png;base64,iVBORw0KGgo="}}]),
        AIMessage(content=[{"type": "thinking", "thinking": "Need the tool.",
                            "signature": "c2lnbmF0dXJl"},
                           {"type": "text", "text": "Let me check."},
                           {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
                            "input": {"city": "Paris"}}],
                  tool_calls=[{"name": "get_weather", "args": {"city": "Paris"},
                               "id": "toolu_01A"}]),
        ToolMessage(content="sunny", tool_call_id="toolu_01A"),
        AIMessage(content="It is sunny.", additional_kwargs={"thinking_blocks": [
            {"type": "thinking", "thinking": "Answer.", "signature": "c2ln"},
            {"type": "redacted_thinking", "data": "ZGF0YQ=="}]}),
        HumanMessage("And Lyon?"),
    ]
    llm = FallbackChatModel([anthropic_down, openai_side.model()], health=HealthTable())
    answer = llm.invoke(conversation)
    assert answer.content == "echo: And Lyon?"
    assert answer.response_metadata["fallback_model"] == "openai:gpt-4o-mini"
    sent = openai_side.fake.requests[-1]["messages"]
    text = str(sent)
    assert "cache_control" not in text and "signature" not in text and "thinking" not in text
    assert sent[1]["content"][0] == {"type": "text", "text": "Weather in Paris?"}
    assert sent[2]["tool_calls"][0]["id"] == "toolu_01A"  # any string is an id there
    assert sent[2]["content"] == [{"type": "text", "text": "Let me check."}]


def test_the_openai_fake_refuses_what_the_api_refuses(fresh: list[Replica]) -> None:
    """The fake above proves something: it refuses the Anthropic-only payloads itself."""
    import openai

    client = openai.OpenAI(api_key=API_KEY, base_url=fresh[0].url, max_retries=0)
    for messages, param in (
            ([{"role": "user", "content": [{"type": "text", "text": "hi",
                                            "cache_control": {"type": "ephemeral"}}]}],
             "messages[0].content[0].cache_control"),
            ([{"role": "user", "content": "hi"},
              {"role": "assistant", "content": [{"type": "thinking", "thinking": "x"}]},
              {"role": "user", "content": "go on"}], "messages[1].content[0].type"),
            ([{"role": "assistant", "content": "x", "thinking_blocks": []}],
             "messages[0].thinking_blocks")):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert info.value.body["param"] == param


# -- every attempt visible ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke", "astream"])
async def test_every_attempt_reaches_langchain_callbacks(fresh: list[Replica], mode: str) -> None:
    """invoke: each attempt is a custom event of the set's run. stream: langchain-core gives a
    stream no run manager, so the attempts reach callbacks on the first chunk's metadata
    (on_llm_new_token), as the caller sees them."""
    from langchain_core.callbacks import BaseCallbackHandler

    from langchain_modelplug.fallback import ATTEMPT_EVENT

    class Events(BaseCallbackHandler):
        def __init__(self) -> None:
            self.events: list[tuple[str, dict[str, Any], Any]] = []
            self.runs: list[Any] = []
            self.tokens: list[Any] = []

        def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any,
                                **kwargs: Any) -> None:
            self.runs.append(run_id)

        def on_custom_event(self, name: str, data: Any, *, run_id: Any, **kwargs: Any) -> None:
            self.events.append((name, data, run_id))

        def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:
            self.tokens.append(chunk)

    primary, spare = fresh[0], fresh[1]
    primary.injector.inject(status(503))
    handler = Events()
    llm = FallbackChatModel([primary.model(), spare.model()], health=HealthTable())
    config = {"callbacks": [handler]}
    expected = [("openai:gpt-4o-mini", "ProviderUnavailableError"), ("openai:gpt-4o-mini", None)]
    if mode in ("invoke", "ainvoke"):
        await llm.ainvoke("hi", config=config) if mode == "ainvoke" else llm.invoke(
            "hi", config=config)
        assert [name for name, _, _ in handler.events] == [ATTEMPT_EVENT] * 2
        assert [(d["candidate"], d["error"]) for _, d, _ in handler.events] == expected
        assert all(d["latency_s"] >= 0 for _, d, _ in handler.events)
        assert {run_id for _, _, run_id in handler.events} == {handler.runs[0]}  # the set's run
        return
    if mode == "stream":
        list(llm.stream("hi", config=config))
    else:
        [c async for c in llm.astream("hi", config=config)]
    first = handler.tokens[0].message.response_metadata["fallback_attempts"]
    assert [(a["candidate"], a["error"]) for a in first] == expected


def test_every_attempt_is_a_llama_index_instrumentation_event(fresh: list[Replica]) -> None:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.llms.modelplug.fallback import FallbackAttemptEvent

    class Events(BaseEventHandler):
        seen: list[Any] = []

        def handle(self, event: Any, **kwargs: Any) -> None:
            if isinstance(event, FallbackAttemptEvent):
                self.seen.append(event)

    handler = Events()
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        primary, spare = fresh[0], fresh[1]
        primary.injector.inject(status(503), status(503))
        llm = FallbackLLM([ModelPlug(**primary.settings()), ModelPlug(**spare.settings())],
                          health=False)
        response = llm.chat([ChatMessage(role="user", content="hi")])
        list(llm.stream_chat([ChatMessage(role="user", content="hi")]))
    finally:
        root.event_handlers.remove(handler)
    assert [(e.candidate, e.error) for e in handler.seen] == [
        ("openai:gpt-4o-mini", "ProviderUnavailableError"), ("openai:gpt-4o-mini", None)] * 2
    assert [a["error"] for a in response.additional_kwargs["fallback_attempts"]] == [
        "ProviderUnavailableError", None]


# -- settings shared by a set ---------------------------------------------------------------------


def test_a_shared_setting_applies_to_the_candidates_that_take_it(local: ChatModelPlug) -> None:
    from modelplug.errors import SettingError

    port = free_port()  # nothing listens: vLLM is down
    llm = FallbackChatModel(["vllm:Qwen/Qwen3-8B", "llamacpp:smollm2"], max_retries=0,
                            timeout=5, base_url=f"http://127.0.0.1:{port}/v1", max_tokens=4,
                            health=HealthTable())
    vllm, in_process = (m.backend.settings for m in llm.models)
    assert vllm["max_retries"] == 0 and vllm["timeout"] == 5
    assert not {"max_retries", "timeout", "base_url"} & set(in_process)
    assert llm.models[1].max_tokens == 4  # a standard parameter reaches every candidate
    answer = llm.invoke("Say hi.")
    assert answer.response_metadata["fallback_model"] == "llamacpp:smollm2"
    assert attempts(answer)[0] == ("vllm:Qwen/Qwen3-8B", "ProviderUnavailableError")
    li = FallbackLLM(["vllm:Qwen/Qwen3-8B", "llamacpp:smollm2"], max_retries=0)
    assert li.models[0].backend.settings["max_retries"] == 0
    assert "max_retries" not in li.models[1].backend.settings
    # A setting no candidate takes is still the mistake it is.
    with pytest.raises(SettingError, match="takes no 'max_retries'"):
        FallbackChatModel(["llamacpp:smollm2", "hf:HuggingFaceTB/SmolLM2-135M-Instruct"],
                          max_retries=0)
    with pytest.raises(SettingError, match="'max_retriez'"):
        FallbackChatModel(["vllm:Qwen/Qwen3-8B", "llamacpp:smollm2"], max_retriez=0)


@pytest.mark.parametrize("aio", [False, True])
async def test_llama_index_resumes_a_cut_stream_into_the_greedy_answer(
        fresh: list[Replica], greedy_pieces: list[str], aio: bool) -> None:
    primary = fresh[0]
    cut_after_ten(primary, greedy_pieces)
    llm = FallbackLLM([ModelPlug(**primary.settings()),
                       ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=64)],
                      resume_streams=True, health=HealthTable())
    messages = [ChatMessage(role="user", content=QUESTION)]
    if aio:
        steps = [s async for s in await llm.astream_chat(messages)]
    else:
        steps = list(llm.stream_chat(messages))
    assert "".join(s.delta or "" for s in steps) == "".join(greedy_pieces)
    assert steps[-1].message.content == "".join(greedy_pieces)  # the whole answer, as one
