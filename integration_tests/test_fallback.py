"""FallbackChatModel and modelplug.fallback on real parts.

The "down" candidate is an OpenAI-compatible provider pointed at a loopback port nobody listens
on; the candidate that answers is the in-process SmolLM2 GGUF, or a loopback server speaking
OpenAI's wire format (status_server.py) where a test needs to see what each candidate received
or needs an HTTP status (429, 500, 400, 401, ...).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from fakes.openai_api import API_KEY as OPENAI_KEY
from fakes.openai_api import FakeOpenAI
from fakes.server import LoopbackServer, free_port
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableWithFallbacks
from pydantic import BaseModel
from status_server import ANSWER, StatusServer

from langchain_modelplug import ChatModelPlug, FallbackChatModel
from modelplug import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    FallbackExhaustedError,
    OutputTruncatedError,
    ProviderUnavailableError,
    RateLimitError,
    UnsupportedCapabilityError,
)
from modelplug.fallback import FallbackPolicy, is_retryable

QUESTION = "What is the capital of France? Answer in one sentence."
TOOL_QUESTION = "What is the value of magic_function(3)?"


def magic_function(input: int) -> int:
    """Applies a magic function to an input."""
    return input + 2


@pytest.fixture(scope="module")
def server() -> Iterator[StatusServer]:
    with StatusServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def local() -> ChatModelPlug:
    return ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def openai_fake() -> Iterator[tuple[FakeOpenAI, str]]:
    """The loopback OpenAI fake (echo: answers "echo: <last user message>" in several deltas)
    and its base URL."""
    fake = FakeOpenAI()
    fake.echo = True
    server = LoopbackServer(fake.app).start()
    yield fake, server.url + "/v1"
    server.stop()


def openai_candidate(kind: str, url: str):
    """A candidate against the OpenAI fake: langchain-openai's ChatOpenAI or ChatModelPlug."""
    if kind == "ChatOpenAI":
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(model="gpt-4o-mini", api_key=OPENAI_KEY, base_url=url, max_retries=0)
    return ChatModelPlug(model="openai:gpt-4o-mini", api_key=OPENAI_KEY, base_url=url,
                         max_retries=0)


def down() -> ChatModelPlug:
    return ChatModelPlug(model="vllm:x", base_url=f"http://127.0.0.1:{free_port()}/v1",
                         max_retries=0, timeout=10)


def at(server: StatusServer, mode: str, **kwargs) -> ChatModelPlug:
    return ChatModelPlug(model="vllm:x", base_url=server.url(mode), max_retries=0, timeout=10,
                         **kwargs)


# -- the default policy on real SDK errors -----------------------------------------------------


def test_importing_the_policy_imports_no_sdk() -> None:
    code = ("import sys, modelplug.fallback, langchain_modelplug; "
            "bad = [m for m in ('openai', 'anthropic', 'ollama', 'httpx', 'llama_cpp') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("status", "retryable"), [
    (429, True), (500, True), (503, True), (529, True),
    (400, False), (401, False), (403, False), (404, False),
])
def test_openai_sdk_status_errors(server: StatusServer, status: int, retryable: bool) -> None:
    import openai

    client = openai.OpenAI(base_url=server.url(f"status-{status}"), api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == status
    assert is_retryable(info.value) is retryable


@pytest.mark.parametrize(("status", "retryable"), [(429, True), (529, True), (401, False)])
def test_anthropic_sdk_status_errors(server: StatusServer, status: int, retryable: bool) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=server.root(f"status-{status}"), api_key="x",
                                 max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-x", max_tokens=8,
                               messages=[{"role": "user", "content": "hi"}])
    assert is_retryable(info.value) is retryable


def test_connection_errors_of_every_sdk_are_retryable() -> None:
    import anthropic
    import httpx
    import ollama
    import openai

    url = f"http://127.0.0.1:{free_port()}"
    errors = []
    for call in (
        lambda: openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        .chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}]),
        lambda: anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
        .messages.create(model="c", max_tokens=8, messages=[{"role": "user", "content": "hi"}]),
        lambda: ollama.Client(host=url).chat(model="m", messages=[{"role": "user",
                                                                   "content": "hi"}]),
        lambda: httpx.get(url),
        lambda: httpx.get(url.replace("127.0.0.1", "10.255.255.1"), timeout=0.001),
    ):
        with pytest.raises(Exception) as info:
            call()
        errors.append(info.value)
    assert [type(e).__name__ for e in errors[:4]] == [
        "APIConnectionError", "APIConnectionError", "ConnectionError", "ConnectError"]
    assert all(is_retryable(e) for e in errors), [(type(e), e) for e in errors]


def test_builtin_and_validation_errors() -> None:
    import ollama

    assert is_retryable(ConnectionRefusedError("refused"))
    assert is_retryable(TimeoutError("slow"))
    assert is_retryable(ollama.ResponseError("busy", 503))
    assert not is_retryable(ollama.ResponseError("model 'x' not found", 404))
    assert not is_retryable(ValueError("bad value"))
    assert not is_retryable(TypeError("bad type"))
    assert not is_retryable(KeyError("k"))
    from pydantic import ValidationError

    class M(BaseModel):
        x: int

    with pytest.raises(ValidationError) as info:
        M(x="no")
    assert not is_retryable(info.value)


def test_retry_on_rejects_non_exceptions() -> None:
    with pytest.raises(TypeError, match="retry_on must"):
        FallbackPolicy(retry_on=("ConnectionError",))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry_on must"):
        FallbackChatModel([down(), down()], retry_on=42)


# -- failing over --------------------------------------------------------------------------------


def test_first_candidate_down_second_answers(local: ChatModelPlug) -> None:
    llm = FallbackChatModel([down(), local])
    message = llm.invoke(QUESTION)
    assert "Paris" in message.content
    assert message.response_metadata["fallback_model"] == "llamacpp:smollm2"
    assert message.response_metadata["fallback_failures"][0].startswith(
        "vllm:x: ProviderUnavailableError")
    assert message.usage_metadata["output_tokens"] > 0


def test_model_strings_and_shared_kwargs() -> None:
    llm = FallbackChatModel(["vllm:x", "llamacpp:smollm2"], temperature=0, max_tokens=24)
    assert all(isinstance(m, ChatModelPlug) for m in llm.models)
    assert [(m.temperature, m.max_tokens) for m in llm.models] == [(0, 24), (0, 24)]
    assert llm.names == ["vllm:x", "llamacpp:smollm2"]
    with pytest.raises(TypeError, match="BaseChatModel instance"):
        FallbackChatModel([ChatModelPlug(model="llamacpp:smollm2").bind(stop=["x"])])
    with pytest.raises(ValueError, match="at least one candidate"):
        FallbackChatModel([])


def test_a_third_party_chat_model_is_a_candidate(local: ChatModelPlug) -> None:
    from langchain_openai import ChatOpenAI

    openai_down = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0,
                             base_url=f"http://127.0.0.1:{free_port()}/v1")
    llm = FallbackChatModel([openai_down, local])
    assert llm.names == ["openai:gpt-4o-mini", "llamacpp:smollm2"]
    message = llm.invoke(QUESTION)
    assert "Paris" in message.content
    assert message.response_metadata["fallback_model"] == "llamacpp:smollm2"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_statuses_fail_over(server: StatusServer, status: int) -> None:
    llm = FallbackChatModel([at(server, f"status-{status}"), at(server, "ok")])
    message = llm.invoke("hi")
    assert message.content == ANSWER
    assert message.response_metadata["fallback_failures"][0].startswith("vllm:x: ")
    assert server.seen(f"status-{status}")  # it was tried


@pytest.mark.parametrize("status", [400, 401, 404])
def test_permanent_statuses_do_not_fail_over(server: StatusServer, status: int) -> None:
    import openai

    before = len(server.seen("ok"))
    llm = FallbackChatModel([at(server, f"status-{status}"), at(server, "ok")])
    with pytest.raises((AuthenticationError, BadRequestError)) as info:
        llm.invoke("hi")
    assert info.value.status_code == status and not info.value.retryable
    assert isinstance(info.value.__cause__, openai.APIStatusError)
    assert len(server.seen("ok")) == before  # the second candidate was never called


def test_retry_on_narrows_what_fails_over(server: StatusServer) -> None:
    # Only timeouts fail over: a refused connection surfaces at once.
    llm = FallbackChatModel([down(), at(server, "ok")], retry_on=TimeoutError)
    with pytest.raises(ProviderUnavailableError) as info:
        llm.invoke("hi")
    assert not isinstance(info.value, TimeoutError)
    # A predicate widens it: here even a 400 fails over.
    llm = FallbackChatModel([at(server, "status-400"), at(server, "ok")],
                            retry_on=lambda exc: getattr(exc, "status_code", None) == 400)
    assert llm.invoke("hi").content == ANSWER


def test_retry_on_classes_match_a_third_party_models_sdk_errors(server: StatusServer) -> None:
    # ChatOpenAI raises openai.APIConnectionError, which is no ConnectionError: retry_on classes
    # match it as the typed error map_sdk_error makes of it (ProviderUnavailableError).
    import openai
    from langchain_openai import ChatOpenAI

    openai_down = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0,
                             base_url=f"http://127.0.0.1:{free_port()}/v1")
    llm = FallbackChatModel([openai_down, at(server, "ok")],
                            retry_on=(TimeoutError, ConnectionError))
    message = llm.invoke("hi")
    assert message.content == ANSWER
    [failure] = message.response_metadata["fallback_failures"]
    assert failure.startswith("openai:gpt-4o-mini: ") and "Connection error" in failure
    # Narrowed to timeouts, it surfaces. (Without health memory: the set above has just seen
    # this endpoint refuse, and a set with memory would skip it while it cools down.)
    with pytest.raises(openai.APIConnectionError):
        FallbackChatModel([openai_down, at(server, "ok")], retry_on=TimeoutError,
                          health=False).invoke("hi")


def test_caller_errors_surface_without_trying_the_next_candidate(
        server: StatusServer, local: ChatModelPlug) -> None:
    before = len(server.seen("ok"))
    llm = FallbackChatModel([local, at(server, "ok")])
    with pytest.raises(ConfigurationError, match="Pass at least one message") as info:
        llm.invoke([])
    assert not isinstance(info.value, (UnsupportedCapabilityError, FallbackExhaustedError))
    with pytest.raises(ConfigurationError, match="Unknown response_format type 'xml'") as info:
        llm.invoke("hi", response_format={"type": "xml"})
    assert not isinstance(info.value, (UnsupportedCapabilityError, FallbackExhaustedError))
    assert len(server.seen("ok")) == before  # the second candidate was never called


def test_conversation_reaches_the_next_candidate_intact(server: StatusServer) -> None:
    conversation = [
        SystemMessage("You are terse."),
        HumanMessage("My name is Ada."),
        AIMessage("Hello Ada."),
        HumanMessage("What is my name?"),
    ]
    llm = FallbackChatModel([at(server, "status-500"), at(server, "ok")]).bind_tools(
        [magic_function])
    assert llm.invoke(conversation).content == ANSWER
    failed, answered = server.seen("status-500")[-1], server.seen("ok")[-1]
    assert failed["messages"] == answered["messages"]
    assert [m["role"] for m in answered["messages"]] == ["system", "user", "assistant", "user"]
    assert answered["messages"][2]["content"] == "Hello Ada."
    # bind_tools bound the tools on every candidate
    assert failed["tools"] == answered["tools"]
    assert answered["tools"][0]["function"]["name"] == "magic_function"


def test_exhausted_carries_every_error(server: StatusServer) -> None:
    import openai

    llm = FallbackChatModel([down(), at(server, "status-503"), at(server, "status-429")])
    with pytest.raises(FallbackExhaustedError) as info:
        llm.invoke("hi")
    error = info.value
    assert [name for name, _ in error.errors] == ["vllm:x", "vllm:x", "vllm:x"]
    kinds = [type(e) for e in error.exceptions]
    assert kinds == [ProviderUnavailableError, ProviderUnavailableError, RateLimitError]
    causes = [type(e.__cause__) for e in error.exceptions]  # the SDK errors, chained
    assert causes == [openai.APIConnectionError, openai.InternalServerError,
                      openai.RateLimitError]
    assert error.__cause__ is error.exceptions[-1]
    assert "503" in str(error) or "overloaded" in str(error)
    assert error.retryable  # an outer fallback set moves on


async def test_async_invoke_and_stream_fail_over(local: ChatModelPlug) -> None:
    llm = FallbackChatModel([down(), local])
    message = await llm.ainvoke(QUESTION)
    assert "Paris" in message.content
    chunks = [chunk async for chunk in llm.astream(QUESTION)]
    assert len(chunks) > 2
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    assert "Paris" in full.content
    assert full.response_metadata["fallback_model"] == "llamacpp:smollm2"


def test_stream_fails_over_before_the_first_chunk(local: ChatModelPlug) -> None:
    llm = FallbackChatModel([down(), local])
    chunks = list(llm.stream(QUESTION))
    assert len(chunks) > 2
    assert "Paris" in "".join(c.content for c in chunks)


def test_stream_error_after_the_first_chunk_propagates(server: StatusServer) -> None:
    before = len(server.seen("ok"))
    llm = FallbackChatModel([at(server, "partial"), at(server, "ok")])
    received = []
    with pytest.raises(ProviderUnavailableError) as info:
        for chunk in llm.stream("hi"):
            received.append(chunk.content)
    assert received[0] == "Hel"  # part of an answer reached the caller ...
    assert not isinstance(info.value, FallbackExhaustedError)
    assert len(server.seen("ok")) == before  # ... so it was not replayed from another model
    # The same cut before any chunk would have failed over:
    assert is_retryable(info.value)


async def test_async_stream_error_after_the_first_chunk_propagates(
        server: StatusServer) -> None:
    before = len(server.seen("ok"))
    llm = FallbackChatModel([at(server, "partial"), at(server, "ok")])
    received = []
    with pytest.raises(ProviderUnavailableError):
        async for chunk in llm.astream("hi"):
            received.append(chunk.content)
    assert received[0] == "Hel"
    assert len(server.seen("ok")) == before


# One loop: langchain-openai caches ChatOpenAI's async client per base URL, bound to the
# loop that made it.
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("kind", ["ChatOpenAI", "ChatModelPlug"])
async def test_a_stream_names_the_answering_candidate_once(
        openai_fake: tuple[FakeOpenAI, str], kind: str) -> None:
    # ChatOpenAI keeps finish_reason in its chunks' generation_info, ChatModelPlug in the
    # metadata of a last chunk: either way the stream says who answered, exactly once.
    _, url = openai_fake
    candidate = openai_candidate(kind, url)
    # health=False: each call meets the dead candidate (with health memory, only the first).
    for llm, failed_over in ((FallbackChatModel([down(), candidate], health=False), True),
                             (FallbackChatModel([candidate]), False)):
        for chunks in (list(llm.stream("hi there")),
                       [c async for c in llm.astream("hi there")]):
            marked = [c for c in chunks if "fallback_model" in c.response_metadata]
            assert marked == chunks[:1]  # the first chunk, and no other
            full = chunks[0]
            for chunk in chunks[1:]:
                full += chunk
            assert full.content == "echo: hi there"
            assert full.response_metadata["fallback_model"] == "openai:gpt-4o-mini"
            assert full.response_metadata["finish_reason"] == "stop"  # the candidate's own
            if failed_over:
                [failure] = full.response_metadata["fallback_failures"]
                assert failure.startswith("vllm:x: ProviderUnavailableError")
            else:
                assert "fallback_failures" not in full.response_metadata


# One loop: langchain-openai caches ChatOpenAI's async client per base URL, bound to the
# loop that made it.
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("kind", ["ChatOpenAI", "ChatModelPlug"])
async def test_invoke_stream_and_batch_name_the_answering_candidate(
        openai_fake: tuple[FakeOpenAI, str], kind: str) -> None:
    _, url = openai_fake
    llm = FallbackChatModel([down(), openai_candidate(kind, url)], health=False)  # every call
    answers = [llm.invoke("one"), await llm.ainvoke("two"), *llm.batch(["three", "four"]),
               *(await llm.abatch(["five"]))]
    merged = None
    for chunk in llm.stream("six"):
        merged = chunk if merged is None else merged + chunk
    answers.append(merged)
    assert [a.content for a in answers] == [
        "echo: one", "echo: two", "echo: three", "echo: four", "echo: five", "echo: six"]
    for answer in answers:
        assert answer.response_metadata["fallback_model"] == "openai:gpt-4o-mini"
        assert len(answer.response_metadata["fallback_failures"]) == 1


def test_ls_params_report_sampling_settings_every_candidate_shares() -> None:
    from langchain_openai import ChatOpenAI

    # The shared kwargs go to the string candidates: the set reports them.
    llm = FallbackChatModel(["vllm:x", "llamacpp:smollm2"], temperature=0, max_tokens=24)
    params = llm._get_ls_params()
    assert (params["ls_provider"], params["ls_model_name"]) == (
        "fallback", "vllm:x, llamacpp:smollm2")
    assert (params["ls_temperature"], params["ls_max_tokens"]) == (0, 24)
    # A call's own settings go to every candidate: they win.
    assert llm._get_ls_params(temperature=0.5)["ls_temperature"] == 0.5
    # Candidates that differ: the set has no one temperature to report.
    other = ChatOpenAI(model="gpt-4o", api_key="sk-test", temperature=0.7)
    params = FallbackChatModel(["vllm:x", other], temperature=0)._get_ls_params()
    assert "ls_temperature" not in params
    assert params["ls_model_name"] == "vllm:x, openai:gpt-4o"
    same = ChatOpenAI(model="gpt-4o", api_key="sk-test", temperature=0)
    assert FallbackChatModel(["vllm:x", same], temperature=0)._get_ls_params()[
        "ls_temperature"] == 0


# -- skipping by capability -------------------------------------------------------------------


def test_candidate_without_tools_is_skipped_for_tools(server: StatusServer) -> None:
    # chat_format= routes llama.cpp through its own chat handler, which has no tool path.
    no_tools = ChatModelPlug(model="llamacpp:smollm2", chat_format="chatml", max_tokens=8)
    assert no_tools.profile["tool_calling"] is False
    llm = FallbackChatModel([no_tools, at(server, "ok")])
    # The vllm row says nothing about tools: the set may have them (combine_profiles).
    assert "tool_calling" not in llm.profile
    message = llm.bind_tools([magic_function]).invoke(TOOL_QUESTION)
    assert message.response_metadata["fallback_model"] == "vllm:x"
    assert "skipped" in message.response_metadata["fallback_failures"][0]
    assert "tool calling" in message.response_metadata["fallback_failures"][0]


def test_candidate_with_a_small_window_is_skipped_for_a_long_prompt(server: StatusServer) -> None:
    small = ChatModelPlug(model="llamacpp:smollm2", n_ctx=64)  # never loaded: skipped
    llm = FallbackChatModel([small, at(server, "ok")])
    message = llm.invoke("Summarise this. " + "The quick brown fox jumps. " * 40)
    assert message.response_metadata["fallback_model"] == "vllm:x"
    assert "context window of 64" in message.response_metadata["fallback_failures"][0]


def test_candidate_without_vision_is_skipped_for_images(server: StatusServer) -> None:
    pixel = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42"
             "mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    image_message = HumanMessage(content=[
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": pixel}},
    ])
    text_only = ChatModelPlug(model="llamacpp:smollm2")
    assert text_only.profile["image_inputs"] is False
    llm = FallbackChatModel([text_only, at(server, "ok")])
    message = llm.invoke([image_message])
    assert message.response_metadata["fallback_model"] == "vllm:x"
    assert "image" in message.response_metadata["fallback_failures"][0]
    parts = server.seen("ok")[-1]["messages"][0]["content"]
    assert any(p.get("type") == "image_url" for p in parts)  # the image reached the next one


def test_a_large_photo_goes_to_the_vision_candidate(server: StatusServer) -> None:
    # A phone photo of about 1 MB is ~1.4 MB of base64: read as text it would be ~350k tokens,
    # over gpt-4o's 128k window. Each image counts at a fixed cost instead, so it is tried.
    import base64
    import io
    import os

    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (600, 600), os.urandom(600 * 600 * 3)).save(buffer, format="PNG")
    assert buffer.tell() > 1_000_000
    photo = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    vision = ChatModelPlug(model="openai:gpt-4o", base_url=server.url("ok"), api_key="sk-test",
                           max_retries=0)
    assert vision.profile["image_inputs"] is True
    assert vision.profile["max_input_tokens"] == 128_000
    llm = FallbackChatModel([ChatModelPlug(model="llamacpp:smollm2"), vision])
    message = llm.invoke([HumanMessage(content=[
        {"type": "text", "text": "What is in this photo?"},
        {"type": "image_url", "image_url": {"url": photo}}])])
    assert message.response_metadata["fallback_model"] == "openai:gpt-4o"
    [skipped] = message.response_metadata["fallback_failures"]
    assert "image inputs" in skipped  # the text-only one was skipped for the image, not size
    parts = server.seen("ok")[-1]["messages"][0]["content"]
    assert [p["image_url"]["url"] for p in parts if p["type"] == "image_url"] == [photo]


def test_a_candidate_that_refuses_the_tool_choice_is_skipped(server: StatusServer) -> None:
    class AutoToolsOnly(ChatModelPlug):
        """A chat model whose bind_tools refuses a forced tool_choice (as some providers do)."""

        def bind_tools(self, tools, *, tool_choice=None, **kwargs):
            if tool_choice not in (None, "auto"):
                raise ValueError(f"tool_choice={tool_choice!r} is not supported; use 'auto'.")
            return super().bind_tools(tools, tool_choice=tool_choice, **kwargs)

    refuser = AutoToolsOnly(model="vllm:x", base_url=server.url("status-500"), max_retries=0)
    before = len(server.seen("status-500"))
    llm = FallbackChatModel([refuser, at(server, "ok")])
    message = llm.bind_tools([magic_function], tool_choice="any").invoke(TOOL_QUESTION)
    assert message.response_metadata["fallback_model"] == "vllm:x"
    assert "skipped" in message.response_metadata["fallback_failures"][0]
    assert len(server.seen("status-500")) == before  # skipped, never called
    assert server.seen("ok")[-1]["tool_choice"] == "required"
    # When no candidate can bind them, the first refusal is raised, naming every candidate's.
    with pytest.raises(ValueError, match="tool_choice='any' is not supported") as info:
        FallbackChatModel([refuser, refuser]).bind_tools([magic_function], tool_choice="any")
    assert "No candidate of this FallbackChatModel can bind these tools" in "".join(
        info.value.__notes__)


def test_both_adapters_say_a_set_can_call_tools_when_any_candidate_can() -> None:
    from llama_index.llms.modelplug import FallbackLLM, ModelPlug

    no_tools = {"model": "llamacpp:smollm2", "chat_format": "chatml"}  # no tool path
    with_tools = {"model": "llamacpp:smollm2"}  # tools through the JSON-schema grammar
    assert FallbackChatModel([ChatModelPlug(**no_tools),
                              ChatModelPlug(**with_tools)]).profile["tool_calling"] is True
    assert FallbackLLM([ModelPlug(**no_tools),
                        ModelPlug(**with_tools)]).metadata.is_function_calling_model is True
    assert FallbackChatModel([ChatModelPlug(**no_tools)] * 2).profile["tool_calling"] is False
    assert FallbackLLM([ModelPlug(**no_tools),
                        ModelPlug(**no_tools)]).metadata.is_function_calling_model is False


def test_every_candidate_skipped_is_exhausted() -> None:
    llm = FallbackChatModel([ChatModelPlug(model="llamacpp:smollm2", chat_format="chatml")])
    with pytest.raises(FallbackExhaustedError) as info:
        llm.bind_tools([magic_function]).invoke(TOOL_QUESTION)
    [(_, error)] = info.value.errors
    assert isinstance(error, UnsupportedCapabilityError)


# -- tools, structured output, profile, tracing -------------------------------------------------


def test_bind_tools_on_every_candidate_and_failover(local: ChatModelPlug) -> None:
    llm = FallbackChatModel([down(), local])
    message = llm.bind_tools([magic_function], tool_choice="any").invoke(TOOL_QUESTION)
    [call] = message.tool_calls
    assert call["name"] == "magic_function" and call["args"] == {"input": 3}


class Capital(BaseModel):
    country: str
    city: str


class FunctionCallingOnly(ChatModelPlug):
    """A chat model whose structured output is a forced tool call: json_schema refused, and
    function_calling its default (as some providers have it)."""

    def with_structured_output(self, schema=None, *, method=None, **kwargs):
        if method == "json_schema":
            raise ValueError("method='json_schema' is not supported; use 'function_calling'.")
        return super().with_structured_output(schema, method=method or "function_calling",
                                              **kwargs)


def test_with_structured_output_skips_candidates_that_refuse_it(
        openai_fake: tuple[FakeOpenAI, str], server: StatusServer) -> None:
    fake, url = openai_fake
    refuser = FunctionCallingOnly(model="vllm:x", base_url=server.url("status-500"),
                                  max_retries=0)
    before = len(server.seen("status-500"))
    llm = FallbackChatModel([refuser, openai_candidate("ChatModelPlug", url)])
    fake.reply({"content": '{"country": "France", "city": "Paris"}'})
    answer = llm.with_structured_output(Capital, method="json_schema").invoke("Paris?")
    assert answer == Capital(country="France", city="Paris")
    assert len(server.seen("status-500")) == before  # the refuser was never called
    assert fake.requests[-1]["response_format"]["type"] == "json_schema"
    # When every candidate refuses, the first one's error is raised, every refusal noted.
    with pytest.raises(ValueError, match="method='json_schema' is not supported") as info:
        FallbackChatModel([refuser, refuser]).with_structured_output(Capital,
                                                                     method="json_schema")
    note = "".join(info.value.__notes__)
    assert "No candidate of this FallbackChatModel can give structured output " \
        "(method='json_schema')" in note
    assert note.count("vllm:x (ValueError") == 2


@pytest.mark.parametrize("method", [None, "json_schema"])
def test_with_structured_output_on_every_candidate(method: str | None) -> None:
    local = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=64)
    llm = FallbackChatModel([down(), local])
    structured = llm.with_structured_output(Capital, **({"method": method} if method else {}))
    answer = structured.invoke("The capital of France is Paris. Fill in the fields.")
    assert isinstance(answer, Capital)
    assert answer.city and answer.country


def test_mixed_candidates_each_give_structured_output_their_own_way(
        openai_fake: tuple[FakeOpenAI, str]) -> None:
    """With no method, each candidate answers as it would alone: the function_calling-only one
    by a forced tool call, llamacpp by its JSON-schema grammar; either answer parses, in one
    chat-model run that fails over between them."""
    fake, url = openai_fake
    tool_only = FunctionCallingOnly(model="openai:gpt-4o-mini", api_key=OPENAI_KEY,
                                    base_url=url, max_retries=0)
    local = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=64)
    llm = FallbackChatModel([tool_only, local])
    structured = llm.with_structured_output(Capital, include_raw=True)
    ask = "The capital of France is Paris. Fill in the fields."
    fake.reply({"content": None, "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "Capital", "arguments": '{"country": "France", "city": "Paris"}'}}]})
    answer = structured.invoke(ask)
    assert answer["parsed"] == Capital(country="France", city="Paris")
    assert answer["raw"].response_metadata["fallback_model"] == "openai:gpt-4o-mini"
    request = fake.requests[-1]
    assert request["tool_choice"]["function"]["name"] == "Capital"
    assert "response_format" not in request
    # The tool-calling candidate fails: llamacpp answers under its grammar, in content.
    fake.fail(500)
    answer = structured.invoke(ask)
    assert isinstance(answer["parsed"], Capital) and answer["parsing_error"] is None
    assert answer["raw"].response_metadata["fallback_model"] == "llamacpp:smollm2"
    assert not answer["raw"].tool_calls and answer["raw"].content
    fake.fail(500)
    assert list(llm.with_structured_output(Capital).stream(ask))[-1] == answer["parsed"]


def test_a_cut_forced_tool_answer_is_an_error_naming_max_tokens() -> None:
    """Structured output through a set (llamacpp's own default, json_schema, and a forced
    tool call) raises OutputTruncatedError naming the answering candidate's max_tokens, as
    ChatModelPlug does, where a forced tool call parsed into None before."""
    llm = FallbackChatModel([down(), "llamacpp:smollm2"], temperature=0, max_tokens=5)
    ask = "Extract the person: Alice is 30 years old."
    for method in (None, "function_calling"):
        with pytest.raises(OutputTruncatedError, match="max_tokens=5"):
            llm.with_structured_output(Capital, method=method).invoke(ask)
    with pytest.raises(OutputTruncatedError, match="max_tokens=5"):
        list(llm.with_structured_output(Capital).stream(ask))
    raw = llm.with_structured_output(Capital, include_raw=True).invoke(ask)
    assert raw["parsed"] is None and isinstance(raw["parsing_error"], OutputTruncatedError)
    assert raw["raw"].response_metadata["fallback_model"] == "llamacpp:smollm2"


def test_profile_and_ls_params_describe_the_set(local: ChatModelPlug) -> None:
    tools_declared = ChatModelPlug(model="sglang:x;tools", base_url="http://127.0.0.1:9/v1")
    llm = FallbackChatModel([tools_declared, local])
    assert llm.profiles == [tools_declared.profile, local.profile]
    assert llm.profile["tool_calling"] is True  # both have it
    # Neither takes images (';tools' declares tools and nothing else): the set does not.
    assert llm.profile["image_inputs"] is False
    # llamacpp constrains output, the sglang row does not say; no candidate is skipped for it,
    # so the set cannot promise it.
    assert "structured_output" not in llm.profile
    assert "max_input_tokens" not in llm.profile  # the sglang window is unknown
    # The vllm row says its models honour a JSON schema (guided decoding): a set with it can.
    vllm = ChatModelPlug(model="vllm:x;tools", base_url="http://127.0.0.1:9/v1")
    assert FallbackChatModel([vllm, local]).profile["structured_output"] is True
    params = llm._get_ls_params(stop=["\n"])
    assert params["ls_provider"] == "fallback"
    assert params["ls_model_name"] == "sglang:x, llamacpp:smollm2"
    assert params["ls_model_type"] == "chat" and params["ls_stop"] == ["\n"]


def test_one_run_per_call_and_usage_counted_once(local: ChatModelPlug) -> None:
    from langchain_core.callbacks import BaseCallbackHandler, UsageMetadataCallbackHandler

    class Recorder(BaseCallbackHandler):
        """Events of the top-level run; its child runs' events (each candidate's attempt, for
        tracing) apart, with the candidate's provider."""

        def __init__(self) -> None:
            self.events: list[str] = []
            self.attempts: list[tuple[str, str]] = []
            self.providers: dict = {}

        def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None,
                                metadata=None, **kwargs):
            if parent_run_id is None:
                self.events.append("start")
            else:
                self.providers[run_id] = (metadata or {}).get("ls_provider")

        def on_llm_new_token(self, token, *, run_id, parent_run_id=None, **kwargs):
            self.events.append("token")

        def on_llm_end(self, response, *, run_id, parent_run_id=None, **kwargs):
            if parent_run_id is None:
                self.events.append("end")
            else:
                message = response.generations[0][0].message
                assert not message.usage_metadata  # counted once, on the fallback run
                self.attempts.append((self.providers[run_id], "end"))

        def on_llm_error(self, error, *, run_id, parent_run_id=None, **kwargs):
            if parent_run_id is None:
                self.events.append("error")
            else:
                self.attempts.append((self.providers[run_id], type(error).__name__))

    recorder, usage = Recorder(), UsageMetadataCallbackHandler()
    llm = FallbackChatModel([down(), local])
    message = llm.invoke(QUESTION, config={"callbacks": [recorder, usage]})
    # The candidates run inside the fallback run: one start, one end, usage counted once; each
    # candidate's attempt is a child run (for tracing), the failed one ending with its error.
    assert recorder.events == ["start", "end"]
    assert recorder.attempts == [("vllm", "ProviderUnavailableError"), ("llamacpp", "end")]
    assert usage.usage_metadata == {"smollm2": message.usage_metadata}

    recorder = Recorder()
    chunks = list(llm.stream(QUESTION, config={"callbacks": [recorder]}))
    assert recorder.events[0] == "start" and recorder.events[-1] == "end"
    assert recorder.events.count("token") == len(chunks)  # each token reported once


# -- agents ----------------------------------------------------------------------------------------


def _tool_turns():
    """Agent middleware: a tool call is forced on the first turn and refused after the tool's
    answer, so the 135M model's agent run is deterministic (a limit of the model: unforced, it
    does not reliably choose between calling and answering)."""
    from langchain.agents.middleware import wrap_model_call

    @wrap_model_call
    def force(request, handler):
        answered = any(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="none" if answered else "any"))

    return force


@pytest.mark.parametrize("kind", ["fallback", "in-process"])
def test_create_agent_with_tools(local: ChatModelPlug, kind: str) -> None:
    from langchain.agents import create_agent

    model = FallbackChatModel([down(), local]) if kind == "fallback" else local
    agent = create_agent(model=model, tools=[magic_function], middleware=[_tool_turns()])
    result = agent.invoke({"messages": [HumanMessage(TOOL_QUESTION)]},
                          config={"recursion_limit": 8})
    messages = result["messages"]
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    assert calls[0]["name"] == "magic_function" and calls[0]["args"] == {"input": 3}
    [tool_message] = [m for m in messages if isinstance(m, ToolMessage)]
    assert tool_message.content == "5"
    assert isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls
    assert messages[-1].content


def test_runnable_with_fallbacks_is_no_chat_model_but_this_is(local: ChatModelPlug) -> None:
    """Why FallbackChatModel exists (langchain issue #33129): ``with_fallbacks`` gives a
    RunnableWithFallbacks, which is no BaseChatModel, so code typed for chat models (create_agent
    and its middleware: profile, provider structured output) does not see one."""
    from langchain_core.language_models import BaseChatModel

    wrapped = down().with_fallbacks([local])
    assert isinstance(wrapped, RunnableWithFallbacks)
    assert not isinstance(wrapped, BaseChatModel)
    assert isinstance(FallbackChatModel([down(), local]), BaseChatModel)
