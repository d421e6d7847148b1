"""The two error kinds the fault suite cannot provoke with a status code alone: a prompt over the
context window (a real llama-server, and OpenAI's documented ``context_length_exceeded`` error)
and a refusal (OpenAI's ``refusal`` field, Anthropic's ``stop_reason: "refusal"``), each through
the official SDK, on invoke and stream, with the SDK's error chained and the right ``retryable``."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest
from fakes.anthropic_api import API_KEY as ANTHROPIC_KEY
from fakes.anthropic_api import FakeAnthropic
from fakes.openai_api import API_KEY as OPENAI_KEY
from fakes.openai_api import FakeOpenAI
from fakes.server import LoopbackServer
from langchain_core.messages import HumanMessage
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from langchain_modelplug import ChatModelPlug, FallbackChatModel
from modelplug import ContextOverflowError, RefusalError

# About 6,000 tokens: more than the 4,096-token window the test llama-server runs with.
TOO_LONG = "Repeat after me: " + "apple banana cherry " * 2000
OVERFLOW_BODY = {"error": {
    "message": "This model's maximum context length is 128000 tokens. However, your messages "
               "resulted in 190000 tokens. Please reduce the length of the messages.",
    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}


def _raises(llm, mode: str, error: type[Exception], prompt: str = "Hello") -> Exception:
    with pytest.raises(error) as info:
        if mode == "invoke":
            llm.invoke(prompt)
        else:
            list(llm.stream(prompt))
    return info.value


@pytest.mark.compile
@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_llama_server_context_overflow_is_typed(llama_server_v1: str, mode: str) -> None:
    llm = ChatModelPlug(model="llamaserver:smollm2", base_url=llama_server_v1, max_retries=0,
                        max_tokens=8)
    messages = [HumanMessage(TOO_LONG)]
    exc = _raises(llm, mode, ContextOverflowError, messages)  # type: ignore[arg-type]
    assert isinstance(exc.__cause__, openai.BadRequestError)
    assert exc.status_code == 400 and exc.retryable  # a larger window may take it
    assert "Shorten the conversation" in str(exc)
    assert messages == [HumanMessage(TOO_LONG)]  # the caller's conversation is untouched


@pytest.fixture(scope="module")
def overflowing_openai() -> Iterator[str]:
    """An OpenAI endpoint that answers every chat request with the documented 400."""
    app = Starlette(routes=[Route("/v1/chat/completions",
                                  lambda request: JSONResponse(OVERFLOW_BODY, status_code=400),
                                  methods=["POST"])])
    server = LoopbackServer(app).start()
    yield f"{server.url}/v1"
    server.stop()


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_openai_context_length_exceeded_is_typed_and_failed_over(
        overflowing_openai: str, mode: str) -> None:
    llm = ChatModelPlug(model="openai:gpt-4o-mini", base_url=overflowing_openai,
                        api_key="sk-x", max_retries=0)
    exc = _raises(llm, mode, ContextOverflowError)
    assert isinstance(exc.__cause__, openai.BadRequestError)
    assert "maximum context length is 128000" in str(exc) and "Shorten" in str(exc)
    # Retryable, unlike other 400s: a candidate with a larger window may take the prompt.
    assert exc.retryable
    larger = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=8)
    answer = FallbackChatModel([llm, larger]).invoke("Hello")
    assert answer.content and answer.response_metadata["fallback_model"] == "llamacpp:smollm2"
    [failure] = answer.response_metadata["fallback_failures"]
    assert failure.startswith("openai:gpt-4o-mini: ContextOverflowError")


@pytest.fixture(scope="module")
def openai_fake() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    server = LoopbackServer(fake.app).start()
    yield fake, f"{server.url}/v1"
    server.stop()


def test_openai_refusal_is_a_refusal_error(openai_fake: tuple[FakeOpenAI, str]) -> None:
    fake, url = openai_fake
    llm = ChatModelPlug(model="openai:gpt-4o-mini", base_url=url, api_key=OPENAI_KEY,
                        max_retries=0)
    fake.reply({"content": None, "refusal": "I can't help with that."})
    exc = _raises(llm, "invoke", RefusalError)
    assert "I can't help with that." in str(exc) and "Rephrase" in str(exc)
    assert not exc.retryable
    fake.reply_stream([{"role": "assistant", "content": None, "refusal": "I can't "},
                       {"refusal": "help with that."}])
    streamed = _raises(llm, "stream", RefusalError)
    assert exc.provider == streamed.provider == "openai"  # the row, streamed or not


@pytest.fixture(scope="module")
def anthropic_fake() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    server = LoopbackServer(fake.app).start()
    yield fake, server.url
    server.stop()


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_anthropic_refusal_stop_reason_is_a_refusal_error(
        anthropic_fake: tuple[FakeAnthropic, str], mode: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = anthropic_fake
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    llm = ChatModelPlug(model="anthropic:claude-sonnet-4-6", base_url=url, api_key=ANTHROPIC_KEY,
                        max_retries=0)
    fake.reply([{"type": "text", "text": "I"}], stop_reason="refusal")
    exc = _raises(llm, mode, RefusalError)
    assert "refusal" in str(exc) and "Rephrase" in str(exc) and not exc.retryable
    assert exc.provider == "anthropic"
    assert not isinstance(exc, anthropic.APIError)  # ours, not the SDK's
