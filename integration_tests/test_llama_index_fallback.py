"""LlamaIndex's FallbackLLM on real parts: which candidates it skips, what fails over, and what
callbacks see.

The candidates are real: ModelPlug pointed at a loopback port nobody listens on (connection
refused), ModelPlug against the loopback OpenAI-format server of status_server.py (an answer, an
HTTP status, or a stream cut after its first chunk; every request recorded), the in-process
SmolLM2 GGUF's profile (never loaded: it is skipped), and llama-index-core's MockLLM as an LLM
from another package (no profile; LlamaIndex's default metadata).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fakes.openai_api import API_KEY as OPENAI_KEY
from fakes.openai_api import FakeOpenAI
from fakes.server import LoopbackServer, free_port
from llama_index.core import Settings
from llama_index.core.base.llms.types import ImageBlock, LLMMetadata, TextBlock
from llama_index.core.callbacks import CallbackManager, CBEventType, TokenCountingHandler
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.llms import ChatMessage, ChatResponse
from llama_index.core.llms.mock import MockLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.modelplug import FallbackLLM, ModelPlug
from llama_index.llms.modelplug.fallback import candidate_profile
from pydantic import BaseModel
from status_server import ANSWER, StatusServer

from modelplug import (
    AuthenticationError,
    BadRequestError,
    FallbackExhaustedError,
    ProviderUnavailableError,
    RateLimitError,
    UnsupportedCapabilityError,
)

MODES = ("chat", "achat", "stream_chat", "astream_chat")
KEY = "fallback_model"
#: About 5,400 tokens by the policy's estimate: over LlamaIndex's default window of 3,900.
LONG = "Summarise this. " + "The quick brown fox jumps. " * 800
#: A 1x1 PNG.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489000000"
                    "0d49444154789c63f8cfc0f01f0005000201e2a1c6b90000000049454e44ae426082")


def magic_function(input: int) -> int:
    """Applies a magic function to an input."""
    return input + 2


TOOL = FunctionTool.from_defaults(fn=magic_function)


@pytest.fixture(scope="module")
def server() -> Iterator[StatusServer]:
    with StatusServer() as srv:
        yield srv


def down() -> ModelPlug:
    return ModelPlug(model="vllm:down", base_url=f"http://127.0.0.1:{free_port()}/v1",
                     max_retries=0, timeout=10)


def at(server: StatusServer, mode: str, **kwargs: Any) -> ModelPlug:
    """A ModelPlug named ``vllm:<mode>`` whose server answers as ``mode`` says."""
    return ModelPlug(model=f"vllm:{mode}", base_url=server.url(mode), max_retries=0, timeout=10,
                     **kwargs)


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


async def run(llm: FallbackLLM, mode: str, messages: list[ChatMessage],
              tools: list[FunctionTool] | None = None) -> ChatResponse:
    """One call in ``mode`` (with tools: its ``*_with_tools`` twin); a stream's last step, after
    checking that every step names the same candidate."""
    if tools is None:
        result = getattr(llm, mode)(messages)
    else:
        result = getattr(llm, f"{mode}_with_tools")(tools, chat_history=messages)
    if inspect.isawaitable(result):
        result = await result
    if mode == "stream_chat":
        steps = list(result)
    elif mode == "astream_chat":
        steps = [step async for step in result]
    else:
        return result
    assert steps
    assert len({step.additional_kwargs.get(KEY) for step in steps}) == 1
    return steps[-1]


def skipped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "modelplug.fallback" and "skipped" in r.getMessage()]


# -- skipping by profile ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_tool_request_skips_candidates_without_tool_calling(
        server: StatusServer, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    no_tool_path = ModelPlug(model="llamacpp:smollm2", chat_format="chatml")  # never loaded
    plain = MockLLM(max_tokens=3)  # no FunctionCallingLLM: it would drop the tools
    llm = FallbackLLM([no_tool_path, plain, at(server, "ok")])
    caplog.set_level(logging.INFO, logger="modelplug.fallback")
    response = await run(llm, mode, user("What is magic_function(3)?"), tools=[TOOL])
    assert response.additional_kwargs[KEY] == "vllm:ok"
    assert [m.split(" skipped")[0] for m in skipped(caplog)] == [
        "Candidate 'llamacpp:smollm2'", "Candidate 'MockLLM:unknown'"]
    assert all("does not support tool calling" in m for m in skipped(caplog))
    assert server.seen("ok")[-1]["tools"][0]["function"]["name"] == "magic_function"
    # Without tools the plain LLM is not skipped: it answers.
    answer = await run(FallbackLLM([plain, at(server, "ok")]), mode, user("Hi"))
    assert answer.additional_kwargs[KEY] == "MockLLM:unknown"


@pytest.mark.parametrize("mode", MODES)
async def test_an_image_request_skips_a_text_only_candidate(
        server: StatusServer, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    text_only = ModelPlug(model="llamacpp:smollm2")  # never loaded: skipped
    vision = ModelPlug(model="openai:gpt-4o", base_url=server.url("ok"), api_key="sk-test",
                       max_retries=0)
    assert candidate_profile(text_only)["image_inputs"] is False
    assert candidate_profile(vision)["image_inputs"] is True
    caplog.set_level(logging.INFO, logger="modelplug.fallback")
    message = ChatMessage(role="user", blocks=[TextBlock(text="What is in this image?"),
                                               ImageBlock(image=PNG, image_mimetype="image/png")])
    response = await run(FallbackLLM([text_only, vision]), mode, [message])
    assert response.additional_kwargs[KEY] == "openai:gpt-4o"
    [reason] = skipped(caplog)
    assert "'llamacpp:smollm2'" in reason and "does not take image inputs" in reason
    parts = server.seen("ok")[-1]["messages"][0]["content"]
    assert [p["image_url"]["url"][:22] for p in parts if p["type"] == "image_url"] == [
        "data:image/png;base64,"]  # the image reached the vision candidate


class StatedWindow(MockLLM):
    """An LLM from another package that states a small context window."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=64, num_output=3, model_name="small")


@pytest.mark.parametrize("mode", MODES)
async def test_a_long_prompt_skips_candidates_whose_window_is_known_to_be_too_small(
        server: StatusServer, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    small_gguf = ModelPlug(model="llamacpp:smollm2", n_ctx=64)  # never loaded: skipped
    # The override of a ModelPlug counts: this one would answer 500 if it were called.
    overridden = at(server, "status-500", context_window=64)
    stated = StatedWindow(max_tokens=3)
    before = len(server.seen("status-500"))
    caplog.set_level(logging.INFO, logger="modelplug.fallback")
    llm = FallbackLLM([small_gguf, overridden, stated, at(server, "ok")])
    response = await run(llm, mode, user(LONG))
    assert response.additional_kwargs[KEY] == "vllm:ok"
    reasons = skipped(caplog)
    assert len(reasons) == 3 and all("over its context window of 64" in r for r in reasons)
    assert len(server.seen("status-500")) == before  # skipped, never called


@pytest.mark.parametrize("mode", MODES)
async def test_llama_index_default_window_is_unknown_not_small(server: StatusServer,
                                                                 mode: str) -> None:
    # MockLLM sets no window: its metadata holds LlamaIndex's DEFAULT_CONTEXT_WINDOW (3900).
    unstated = MockLLM(max_tokens=3)
    assert unstated.metadata.context_window == 3900
    assert "max_input_tokens" not in candidate_profile(unstated)
    response = await run(FallbackLLM([unstated, at(server, "ok")]), mode, user(LONG))
    assert response.additional_kwargs[KEY] == "MockLLM:unknown"  # tried, not skipped
    assert response.message.content.startswith("text")  # MockLLM's answer


# -- what fails over ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("first", ["status-429", "status-500", "status-503", "refused"])
async def test_transient_errors_fail_over(server: StatusServer, mode: str, first: str) -> None:
    candidate = down() if first == "refused" else at(server, first)
    before = len(server.seen(first))
    response = await run(FallbackLLM([candidate, at(server, "ok")]), mode, user("hi"))
    assert response.message.content == ANSWER
    assert response.additional_kwargs[KEY] == "vllm:ok"
    if first != "refused":
        assert len(server.seen(first)) == before + 1  # it was tried, once
        assert server.seen(first)[-1]["messages"] == server.seen("ok")[-1]["messages"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("status", "error"), [(400, BadRequestError),
                                               (401, AuthenticationError)])
async def test_permanent_statuses_do_not_fail_over(server: StatusServer, mode: str, status: int,
                                                   error: type[Exception]) -> None:
    import openai

    before = len(server.seen("ok"))
    llm = FallbackLLM([at(server, f"status-{status}"), at(server, "ok")])
    with pytest.raises(error) as info:
        await run(llm, mode, user("hi"))
    assert info.value.status_code == status and not info.value.retryable
    assert not isinstance(info.value, FallbackExhaustedError)
    assert isinstance(info.value.__cause__, openai.APIStatusError)
    assert len(server.seen("ok")) == before  # the second candidate was never called


@pytest.mark.parametrize("mode", MODES)
async def test_retry_on_classes_narrow_what_fails_over(server: StatusServer, mode: str) -> None:
    before = len(server.seen("ok"))
    # Only timeouts fail over: a refused connection surfaces at once, as itself.
    llm = FallbackLLM([down(), at(server, "ok")], retry_on=TimeoutError)
    with pytest.raises(ProviderUnavailableError) as info:
        await run(llm, mode, user("hi"))
    assert not isinstance(info.value, (TimeoutError, FallbackExhaustedError))
    # A 429 is no ConnectionError: with retry_on=ConnectionError it surfaces too ...
    llm = FallbackLLM([at(server, "status-429"), at(server, "ok")], retry_on=(ConnectionError,))
    with pytest.raises(RateLimitError):
        await run(llm, mode, user("hi"))
    assert len(server.seen("ok")) == before
    # ... while a refused connection, which is one, fails over.
    llm = FallbackLLM([down(), at(server, "ok")], retry_on=(ConnectionError,))
    assert (await run(llm, mode, user("hi"))).additional_kwargs[KEY] == "vllm:ok"


@pytest.mark.parametrize("mode", MODES)
async def test_retry_on_a_callable_decides_what_fails_over(server: StatusServer,
                                                           mode: str) -> None:
    seen: list[BaseException] = []

    def only_400(exc: BaseException) -> bool:
        seen.append(exc)
        return getattr(exc, "status_code", None) == 400

    # It widens the default (a 400 fails over) ...
    llm = FallbackLLM([at(server, "status-400"), at(server, "ok")], retry_on=only_400)
    assert (await run(llm, mode, user("hi"))).additional_kwargs[KEY] == "vllm:ok"
    assert isinstance(seen[-1], BadRequestError)
    # ... and narrows it (a 503 does not).
    llm = FallbackLLM([at(server, "status-503"), at(server, "ok")], retry_on=only_400)
    with pytest.raises(ProviderUnavailableError) as info:
        await run(llm, mode, user("hi"))
    assert info.value.status_code == 503


def test_retry_on_that_is_not_an_exception_class_is_refused() -> None:
    with pytest.raises(TypeError, match="retry_on must hold exception classes; got "
                                        r"\['ConnectionError'\]"):
        FallbackLLM([down()], retry_on=("ConnectionError",))


@pytest.mark.parametrize("mode", MODES)
async def test_exhausted_carries_every_error_the_last_chained(server: StatusServer,
                                                              mode: str) -> None:
    import openai

    llm = FallbackLLM([ModelPlug(model="llamacpp:smollm2", n_ctx=64), down(),
                       at(server, "status-503"), at(server, "status-429")])
    with pytest.raises(FallbackExhaustedError) as info:
        await run(llm, mode, user(LONG))
    error = info.value
    assert [name for name, _ in error.errors] == [
        "llamacpp:smollm2", "vllm:down", "vllm:status-503", "vllm:status-429"]
    assert [type(e) for e in error.exceptions] == [
        UnsupportedCapabilityError, ProviderUnavailableError, ProviderUnavailableError,
        RateLimitError]
    assert [type(e.__cause__) for e in error.exceptions[1:]] == [  # the SDK errors, chained
        openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError]
    assert error.__cause__ is error.exceptions[-1]
    assert "vllm:status-503" in str(error) and error.retryable


# -- streams fail over only before their first chunk ----------------------------------------------


async def test_a_stream_cut_after_its_first_chunk_is_not_replayed(server: StatusServer) -> None:
    before = len(server.seen("ok"))
    # health=False: the second call meets the cut stream again (health memory would skip it).
    llm = FallbackLLM([at(server, "partial"), at(server, "ok")], health=False)
    received: list[str] = []
    with pytest.raises(ProviderUnavailableError) as info:
        for step in llm.stream_chat(user("hi")):
            received.append(step.delta)
    assert received == ["Hel"]  # part of one answer reached the caller ...
    assert not isinstance(info.value, FallbackExhaustedError)
    received = []
    with pytest.raises(ProviderUnavailableError):
        async for step in await llm.astream_chat(user("hi")):
            received.append(step.delta)
    assert received == ["Hel"]
    assert len(server.seen("ok")) == before  # ... so no other model's answer was appended
    # The same error before the first chunk fails over (test_transient_errors_fail_over).
    assert info.value.retryable


# -- callbacks: one FallbackLLM call is one LLM event ---------------------------------------------


class LLMEvents(BaseCallbackHandler):
    """Counts LLM event starts and ends."""

    def __init__(self) -> None:
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.starts = 0
        self.ends = 0

    def on_event_start(self, event_type, payload=None, event_id="", parent_id="", **kwargs):
        self.starts += event_type == CBEventType.LLM
        return event_id

    def on_event_end(self, event_type, payload=None, event_id="", **kwargs):
        self.ends += event_type == CBEventType.LLM

    def start_trace(self, trace_id=None):
        pass

    def end_trace(self, trace_id=None, trace_map=None):
        pass


@pytest.mark.parametrize("mode", [*MODES, "complete", "stream_complete"])
async def test_instance_candidates_sharing_the_handlers_are_counted_once(
        server: StatusServer, mode: str) -> None:
    counter, events = TokenCountingHandler(tokenizer=str.split), LLMEvents()
    manager = CallbackManager([counter, events])
    failing, answering = down(), at(server, "ok")
    failing.callback_manager = answering.callback_manager = manager
    llm = FallbackLLM([failing, answering], callback_manager=manager)
    if mode == "complete":
        assert llm.complete("hi").text == ANSWER
    elif mode == "stream_complete":
        assert [step for step in llm.stream_complete("hi")][-1].text == ANSWER
    else:
        assert (await run(llm, mode, user("hi"))).message.content == ANSWER
    assert (events.starts, events.ends) == (1, 1)
    assert len(counter.llm_token_counts) == 1
    assert counter.completion_llm_token_count > 0
    # The callers' objects are as they were: their own calls are still counted.
    assert answering.callback_manager is manager and manager.handlers == [counter, events]
    answering.chat(user("hi"))
    assert (events.starts, len(counter.llm_token_counts)) == (2, 2)


def test_a_candidates_own_handlers_still_see_its_call(server: StatusServer) -> None:
    shared, own = LLMEvents(), LLMEvents()
    answering = at(server, "ok", callback_manager=CallbackManager([shared, own]))
    llm = FallbackLLM([answering], callback_manager=CallbackManager([shared]))
    llm.chat(user("hi"))
    assert (shared.starts, own.starts) == (1, 1)


def test_string_candidates_are_counted_once_with_global_callbacks(server: StatusServer) -> None:
    counter, events = TokenCountingHandler(tokenizer=str.split), LLMEvents()
    previous = Settings._callback_manager
    Settings.callback_manager = CallbackManager([counter, events])
    try:
        # CallbackManager([]) would take Settings' handlers: the candidate must have none.
        llm = FallbackLLM(["vllm:ok"], base_url=server.url("ok"), max_retries=0)
        assert llm.models[0].callback_manager.handlers == []
        llm.chat(user("hi"))
    finally:
        Settings._callback_manager = previous
    assert (events.starts, len(counter.llm_token_counts)) == (1, 1)


class City(BaseModel):
    name: str
    country: str


@pytest.fixture(scope="module")
def openai_fake() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    server = LoopbackServer(fake.app).start()
    yield fake, server.url + "/v1"
    server.stop()


@pytest.mark.parametrize("shares", [True, False], ids=["candidate-shares", "candidate-bare"])
async def test_structured_predict_is_one_llm_event(openai_fake: tuple[FakeOpenAI, str],
                                                   shares: bool) -> None:
    # structured_predict reports no event of its own: the candidate's chat is the one, seen by
    # the FallbackLLM's handlers whether or not the candidate has them too. (Each candidate
    # tried is an event of its own here, a failed one ending with its error.)
    fake, url = openai_fake
    events = LLMEvents()
    candidate = ModelPlug(model="openai:gpt-4o-mini", base_url=url, api_key=OPENAI_KEY,
                          max_retries=0,
                          callback_manager=CallbackManager([events] if shares else []))
    if not shares:
        candidate.callback_manager.set_handlers([])
    llm = FallbackLLM([candidate], callback_manager=CallbackManager([events]))
    prompt = PromptTemplate("{text}\nExtract the city and its country.")
    answer = json.dumps({"name": "Paris", "country": "France"})
    fake.reply({"content": answer})
    assert llm.structured_predict(City, prompt, text="Paris, France") == City(
        name="Paris", country="France")
    fake.reply({"content": answer})
    assert (await llm.astructured_predict(City, prompt, text="Paris, France")).name == "Paris"
    assert (events.starts, events.ends) == (2, 2)
    assert fake.requests[-1]["response_format"]["type"] == "json_schema"
