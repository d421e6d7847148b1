"""Fault injection across providers, call styles and fallback wrappers.

Each wire fake (OpenAI chat completions, Anthropic Messages, Ollama native) sits behind a
:class:`~fakes.faults.FaultInjector` that spoils one request at a time: HTTP 500, 503, 429 with
Retry-After, a hang past the client's timeout, a TCP reset, malformed JSON, a stream cut midway,
or the real answer trickled a few bytes at a time (quickly, or stalling past the timeout between
pieces). Every case runs through the official SDK with
``max_retries=0`` and a short ``timeout``, for invoke, stream, ainvoke and astream (LlamaIndex:
chat, stream_chat, achat, astream_chat), alone and inside FallbackChatModel and FallbackLLM.

Every case must end within the configured timeout (plus a generous margin for a loaded machine)
with the right typed error, or, inside a fallback wrapper, with the right failover: the same
conversation handed to the next candidate. A failed call leaves the caller's messages and the
LLM cache as they were.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from fakes.anthropic_api import API_KEY as ANTHROPIC_KEY
from fakes.anthropic_api import FakeAnthropic
from fakes.faults import Fault, FaultInjector, serve, status
from fakes.ollama_api import FakeOllama
from fakes.openai_api import API_KEY as OPENAI_KEY
from fakes.openai_api import FakeOpenAI
from langchain_core.caches import InMemoryCache
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from llama_index.core.llms import ChatMessage
from llama_index.llms.modelplug import FallbackLLM, ModelPlug

from langchain_modelplug import ChatModelPlug, FallbackChatModel
from modelplug import (
    FallbackExhaustedError,
    ModelPlugError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)

#: The client timeout of every case (seconds); a hang lasts four times as long.
TIMEOUT = 0.3
#: Slack on top of the timeout before a case counts as "did not end in time" (loaded CI machines).
MARGIN = 5.0
#: The timeout of a fallback candidate that must answer: only the faulty one needs the short
#: TIMEOUT, and on a loaded machine even a loopback connect can take longer than that.
SPARE_TIMEOUT = 10.0
ANSWER = "Hello there, friend."

#: fault name -> (fault, the typed error it must raise; None: the call must succeed)
FAULTS: dict[str, tuple[Fault, type[ModelPlugError] | None]] = {
    "500": (status(500), ProviderUnavailableError),
    "503": (status(503), ProviderUnavailableError),
    "429": (status(429, retry_after=7), RateLimitError),
    "hang": (Fault("hang", seconds=TIMEOUT * 4), ProviderTimeoutError),
    "reset": (Fault("reset"), ProviderUnavailableError),
    "malformed": (Fault("malformed"), ProviderUnavailableError),
    "drop": (Fault("drop"), ProviderUnavailableError),
    "trickle": (Fault("trickle", size=64, seconds=0.001), None),
    # The answer starts (status and headers sent), then stalls past the timeout between pieces:
    # the SDK's read timeout fires mid-body.
    "stall": (Fault("trickle", size=3, seconds=TIMEOUT * 4), ProviderTimeoutError),
}
#: Body messages each fake sends before its first text (the drop cuts just after some text).
DROP_AFTER = {"openai": 2, "anthropic": 4, "ollama": 1}
LC_MODES = ("invoke", "stream", "ainvoke", "astream")
LI_MODES = ("chat", "stream_chat", "achat", "astream_chat")


class Provider:
    """One fake behind an injector, and how to build models that talk to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fake: Any = {"openai": FakeOpenAI, "anthropic": FakeAnthropic,
                          "ollama": FakeOllama}[name]()
        self.injector: FaultInjector
        self.injector, self.server = serve(self.fake.app, name)

    def queue_answer(self) -> None:
        if self.name == "openai":
            self.fake.reply({"content": ANSWER})
        elif self.name == "anthropic":
            self.fake.reply([{"type": "text", "text": ANSWER}])
        else:
            self.fake.reply(ANSWER)

    def settings(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        url = self.server.url
        if self.name == "openai":
            return {"model": "openai:gpt-4o-mini", "api_key": OPENAI_KEY, "base_url": url + "/v1",
                    "timeout": timeout, "max_retries": 0}
        if self.name == "anthropic":
            return {"model": "anthropic:claude-sonnet-4-6", "api_key": ANTHROPIC_KEY,
                    "base_url": url, "timeout": timeout, "max_retries": 0}
        return {"model": "ollama:qwen3:8b", "base_url": url, "timeout": timeout}

    def clear(self) -> None:
        self.injector.reset()
        self.fake._replies.clear()


@pytest.fixture(scope="module", params=["openai", "anthropic", "ollama"])
def provider(request: pytest.FixtureRequest) -> Any:
    p = Provider(request.param)
    p.queue_answer()  # warm up: SDK import and first connection stay out of the timed cases
    ChatModelPlug(**p.settings()).invoke("hi")
    yield p
    p.server.stop()


@pytest.fixture
def fresh(provider: Provider) -> Provider:
    provider.clear()
    yield provider
    provider.clear()


def conversation() -> list[Any]:
    return [SystemMessage("You are terse."), HumanMessage("My name is Ada."),
            AIMessage("Hello Ada."), HumanMessage("Greet me.")]


def li_conversation() -> list[ChatMessage]:
    return [ChatMessage(role="system", content="You are terse."),
            ChatMessage(role="user", content="My name is Ada."),
            ChatMessage(role="assistant", content="Hello Ada."),
            ChatMessage(role="user", content="Greet me.")]


async def run_lc(model: Any, mode: str, messages: list[Any], partial: list[str]) -> AIMessage:
    """One LangChain call; streamed text also lands in ``partial`` as it arrives."""
    if mode == "invoke":
        return model.invoke(messages)
    if mode == "ainvoke":
        return await model.ainvoke(messages)
    full = None
    chunks = model.stream(messages) if mode == "stream" else None
    if chunks is not None:
        for chunk in chunks:
            partial.append(chunk.content)
            full = chunk if full is None else full + chunk
    else:
        async for chunk in model.astream(messages):
            partial.append(chunk.content)
            full = chunk if full is None else full + chunk
    assert full is not None
    return full


async def run_li(llm: Any, mode: str, messages: list[ChatMessage], partial: list[str]) -> Any:
    """One LlamaIndex call; streamed deltas also land in ``partial``."""
    if mode == "chat":
        return llm.chat(messages)
    if mode == "achat":
        return await llm.achat(messages)
    last = None
    if mode == "stream_chat":
        for last in llm.stream_chat(messages):
            partial.append(last.delta or "")
    else:
        async for last in await llm.astream_chat(messages):
            partial.append(last.delta or "")
    return last


def arm(p: Provider, name: str) -> tuple[Fault, type[ModelPlugError] | None]:
    fault, expected = FAULTS[name]
    if fault.kind == "drop":
        fault = Fault("drop", after=DROP_AFTER[p.name])
    p.injector.inject(fault)
    p.queue_answer()  # for the faults that reach the fake (drop, trickle)
    p.queue_answer()  # for the fallback candidate
    return fault, expected


def text_of(result: Any) -> str:
    if isinstance(result, AIMessage):
        return result.content
    return result.message.content


# -- alone ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault_name", list(FAULTS))
@pytest.mark.parametrize("mode", LC_MODES)
async def test_alone(fresh: Provider, mode: str, fault_name: str) -> None:
    fault, expected = arm(fresh, fault_name)
    cache = InMemoryCache()
    model = ChatModelPlug(**fresh.settings(), cache=cache)
    messages = conversation()
    before = copy.deepcopy(messages)
    partial: list[str] = []
    started = time.monotonic()
    if expected is None:
        result = await run_lc(model, mode, messages, partial)
        assert text_of(result) == ANSWER
    else:
        with pytest.raises(expected) as info:
            await run_lc(model, mode, messages, partial)
        error = info.value
        assert error.provider == fresh.name
        assert error.__cause__ is not None  # the SDK's own error, chained
        assert error.retryable
        if fault.kind == "status":
            assert error.status_code == fault.status
            assert f"HTTP {fault.status}" in str(error)
        if fault_name == "429":
            assert error.retry_after == 7
            assert "Wait 7 s" in str(error)
        if fault.kind == "hang":
            assert f"within the timeout ({TIMEOUT:g} s)" in str(error)
        if fault.kind == "drop" and mode in ("stream", "astream"):
            assert "".join(partial) and ANSWER.startswith("".join(partial))
        else:
            assert not "".join(partial)
        assert messages == before  # the conversation is untouched
        assert cache._cache == {}  # and nothing was cached for the failed call
    assert time.monotonic() - started < TIMEOUT + MARGIN
    assert len(fresh.injector.seen) == 1  # max_retries=0: one request, no hidden retry


# -- inside FallbackChatModel -----------------------------------------------------------------


@pytest.mark.parametrize("fault_name", list(FAULTS))
@pytest.mark.parametrize("mode", LC_MODES)
async def test_fallback_chat_model(fresh: Provider, mode: str, fault_name: str) -> None:
    fault, expected = arm(fresh, fault_name)
    model = FallbackChatModel([ChatModelPlug(**fresh.settings()),
                               ChatModelPlug(**fresh.settings(SPARE_TIMEOUT))])
    messages = conversation()
    before = copy.deepcopy(messages)
    partial: list[str] = []
    started = time.monotonic()
    cut_mid_stream = fault.kind == "drop" and mode in ("stream", "astream")
    if cut_mid_stream:
        # Part of an answer reached the caller: the error propagates, nothing is replayed.
        with pytest.raises(ProviderUnavailableError):
            await run_lc(model, mode, messages, partial)
        assert "".join(partial) and ANSWER.startswith("".join(partial))
        assert len(fresh.injector.seen) == 1
    else:
        result = await run_lc(model, mode, messages, partial)
        assert text_of(result) == ANSWER
        if expected is None:
            assert len(fresh.injector.seen) == 1
        else:
            failures = result.response_metadata["fallback_failures"]  # streams: 1st chunk
            assert len(failures) == 1 and f": {expected.__name__}: " in failures[0]
            first, second = (body for _, body in fresh.injector.seen)
            assert first["messages"] == second["messages"]  # the same conversation, failed over
    assert messages == before
    assert time.monotonic() - started < TIMEOUT + MARGIN


# -- inside FallbackLLM (LlamaIndex) ----------------------------------------------------------


@pytest.mark.parametrize("fault_name", list(FAULTS))
@pytest.mark.parametrize("mode", LI_MODES)
async def test_fallback_llm(fresh: Provider, mode: str, fault_name: str) -> None:
    fault, expected = arm(fresh, fault_name)
    llm = FallbackLLM([ModelPlug(**fresh.settings()), ModelPlug(**fresh.settings(SPARE_TIMEOUT))])
    messages = li_conversation()
    before = copy.deepcopy(messages)
    partial: list[str] = []
    started = time.monotonic()
    if fault.kind == "drop" and mode in ("stream_chat", "astream_chat"):
        with pytest.raises(ProviderUnavailableError):
            await run_li(llm, mode, messages, partial)
        assert "".join(partial) and ANSWER.startswith("".join(partial))
        assert len(fresh.injector.seen) == 1
    else:
        result = await run_li(llm, mode, messages, partial)
        assert text_of(result) == ANSWER
        assert len(fresh.injector.seen) == (1 if expected is None else 2)
        if expected is not None:
            first, second = (body for _, body in fresh.injector.seen)
            assert first["messages"] == second["messages"]
    assert messages == before
    assert time.monotonic() - started < TIMEOUT + MARGIN


# -- exhausted ----------------------------------------------------------------------------------


async def test_every_candidate_faulty_is_exhausted_with_typed_errors(fresh: Provider) -> None:
    fresh.injector.inject(status(503), Fault("hang", seconds=TIMEOUT * 4), Fault("reset"))
    model = FallbackChatModel([ChatModelPlug(**fresh.settings()) for _ in range(3)])
    started = time.monotonic()
    with pytest.raises(FallbackExhaustedError) as info:
        await model.ainvoke("hi")
    assert time.monotonic() - started < 3 * TIMEOUT + MARGIN
    kinds = [type(e) for e in info.value.exceptions]
    assert kinds == [ProviderUnavailableError, ProviderTimeoutError, ProviderUnavailableError]
    assert info.value.retryable and info.value.__cause__ is info.value.exceptions[-1]
    assert "ProviderTimeoutError" in str(info.value)
