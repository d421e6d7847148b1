"""OpenTelemetry spans (issue 17): modelplug's own GenAI spans (modelplug.tracing) and the
instrumentations users already run (OpenInference for LangChain and LlamaIndex, OpenTelemetry's
LangChain instrumentation), captured with the SDK's InMemorySpanExporter.

Real parts: the in-process SmolLM2 (``llamacpp:smollm2``), a dead vLLM candidate (a closed
port), and the OpenAI / Anthropic wire fakes for cloud usage (cached, reasoning, audio tokens).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fakes.anthropic_api import API_KEY as ANTHROPIC_KEY
from fakes.anthropic_api import FakeAnthropic
from fakes.openai_api import API_KEY as OPENAI_KEY
from fakes.openai_api import FakeOpenAI, embedding_of, usage_block
from fakes.server import LoopbackServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from modelplug import ChatRequest, CompletionRequest, create_backend, tracing

ASK = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def spans(provider) -> Iterator[InMemorySpanExporter]:
    """modelplug's spans go to an in-memory exporter for the test (no global provider is set)."""
    tracer_provider, exporter = provider
    exporter.clear()
    tracing.configure(tracer_provider=tracer_provider)
    yield exporter
    tracing.configure(tracer_provider=None)
    exporter.clear()


@pytest.fixture(scope="module")
def smollm2():
    return create_backend("llamacpp:smollm2")


def _dead_url() -> str:
    with socket.socket() as sock:  # bound then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.fixture
def openai() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    srv = LoopbackServer(fake.app).start()
    yield fake, f"{srv.url}/v1"
    srv.stop()


@pytest.fixture
def anthropic() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    srv = LoopbackServer(fake.app).start()
    yield fake, srv.url
    srv.stop()


def _tree(spans: list[ReadableSpan]) -> dict[str, list[str]]:
    """Span name -> the names of its children, in start order."""
    by_id = {s.context.span_id: s for s in spans}
    children: dict[str, list[str]] = {s.name: [] for s in spans}
    for span in sorted(spans, key=lambda s: s.start_time):
        if span.parent is not None and span.parent.span_id in by_id:
            children[by_id[span.parent.span_id].name].append(span.name)
    return children


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


# -- modelplug's own spans ------------------------------------------------------------------


def test_chat_spans_on_the_real_local_model(spans, smollm2) -> None:
    request = ChatRequest(messages=ASK, max_tokens=4, temperature=0, top_p=0.9, seed=7,
                          stop=["\n\n"])
    answers = [smollm2.chat(request)]
    chunks = list(smollm2.stream(request))
    answers.append(asyncio.run(smollm2.achat(request)))

    async def astream() -> list[Any]:
        return [c async for c in smollm2.astream(request)]
    achunks = asyncio.run(astream())

    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["chat smollm2"] * 4  # no span twice (achat's thread)
    usages = [answers[0].usage, chunks[-1].usage, answers[1].usage, achunks[-1].usage]
    for span, usage, streamed in zip(finished, usages, [False, True, False, True], strict=True):
        attrs = span.attributes
        assert span.kind is SpanKind.CLIENT and span.parent is None
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "llamacpp"
        assert attrs["gen_ai.request.model"] == "smollm2"
        assert attrs["gen_ai.response.model"] == answers[0].model
        assert (attrs["gen_ai.request.max_tokens"], attrs["gen_ai.request.temperature"],
                attrs["gen_ai.request.top_p"], attrs["gen_ai.request.seed"]) == (4, 0, 0.9, 7)
        assert tuple(attrs["gen_ai.request.stop_sequences"]) == ("\n\n",)
        assert usage.input_tokens > 0 and usage.output_tokens > 0
        assert attrs["gen_ai.usage.input_tokens"] == usage.input_tokens
        assert attrs["gen_ai.usage.output_tokens"] == usage.output_tokens
        assert attrs["gen_ai.response.finish_reasons"] == ("length",)
        assert "server.address" not in attrs  # in-process
        assert attrs.get("gen_ai.request.stream", False) is streamed
        assert ("gen_ai.response.time_to_first_chunk" in attrs) is streamed
        assert span.status.status_code is StatusCode.UNSET


def test_a_batch_is_one_span_per_request(spans, smollm2) -> None:
    requests = [ChatRequest(messages=[{"role": "user", "content": q}], max_tokens=n,
                            temperature=0)
                for q, n in (("Say hi.", 2), ("Name a colour, then a fruit.", 3))]
    answers = smollm2.batch(requests)  # one batched generation in-process
    answers += asyncio.run(smollm2.abatch(requests))
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["chat smollm2"] * 4  # the inner calls not again
    for span, answer in zip(finished, answers, strict=True):
        assert span.attributes["gen_ai.usage.input_tokens"] == answer.usage.input_tokens
        assert span.attributes["gen_ai.usage.output_tokens"] == answer.usage.output_tokens
    assert [s.attributes["gen_ai.request.max_tokens"] for s in finished] == [2, 3, 2, 3]


def test_a_stream_closed_early_ends_its_span_without_error(spans, smollm2) -> None:
    stream = smollm2.stream(ChatRequest(messages=ASK, max_tokens=16, temperature=0))
    next(stream)
    assert not spans.get_finished_spans()  # open while the caller reads
    stream.close()
    span = _one(spans.get_finished_spans(), "chat smollm2")
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["gen_ai.response.time_to_first_chunk"] > 0


def test_raw_completion_is_a_text_completion_span(spans, smollm2) -> None:
    answer = smollm2.complete(CompletionRequest(prompt="The capital of France is",
                                                max_tokens=3, temperature=0))
    span = _one(spans.get_finished_spans(), "text_completion smollm2")
    assert span.attributes["gen_ai.operation.name"] == "text_completion"
    assert span.attributes["gen_ai.usage.output_tokens"] == answer.usage.output_tokens > 0


def test_an_unreachable_provider_is_an_error_span(spans) -> None:
    from modelplug import ProviderUnavailableError

    url = _dead_url()
    dead = create_backend("vllm:dead", base_url=url, max_retries=0, timeout=5)
    with pytest.raises(ProviderUnavailableError):
        dead.chat(ChatRequest(messages=ASK))
    span = _one(spans.get_finished_spans(), "chat dead")
    assert span.attributes["gen_ai.provider.name"] == "vllm"
    assert span.attributes["error.type"] == "ProviderUnavailableError"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["server.address"] == "127.0.0.1"
    assert span.attributes["server.port"] == int(url.rsplit(":", 1)[1].split("/")[0])
    assert [e.name for e in span.events] == ["exception"]


def test_openai_usage_details_reach_the_span(spans, openai) -> None:
    fake, url = openai
    o3 = create_backend("openai:o3-mini", base_url=url, api_key=OPENAI_KEY, max_retries=0)
    fake.reply({"content": "4"}, usage=usage_block(prompt=20, completion=150, cached=8,
                                                   reasoning=140))
    o3.chat(ChatRequest(messages=ASK))
    fake.reply_stream([{"content": "4"}], usage=usage_block(prompt=20, completion=150,
                                                            cached=8, reasoning=140))
    list(o3.stream(ChatRequest(messages=ASK)))
    plain, streamed = spans.get_finished_spans()
    for span, ident in ((plain, "chatcmpl-fake1"), (streamed, "chatcmpl-fake2")):
        attrs = span.attributes
        assert span.name == "chat o3-mini"
        assert attrs["gen_ai.provider.name"] == "openai"
        assert attrs["gen_ai.response.id"] == ident
        assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == \
            (20, 150)
        assert attrs["gen_ai.usage.cache_read.input_tokens"] == 8
        assert attrs["gen_ai.usage.reasoning.output_tokens"] == 140
        assert attrs["server.address"] == "127.0.0.1"
        assert attrs["server.port"] == int(url.rsplit(":", 1)[1].split("/")[0])


def test_audio_tokens_reach_the_span(spans, openai) -> None:
    fake, url = openai
    audio = create_backend("openai:gpt-audio;tools", base_url=url, api_key=OPENAI_KEY,
                           max_retries=0)
    fake.reply({"content": "hi"}, usage=usage_block(prompt=100, completion=50, audio_in=40,
                                                    audio_out=30))
    audio.chat(ChatRequest(messages=ASK))
    attrs = _one(spans.get_finished_spans(), "chat gpt-audio").attributes
    assert (attrs["gen_ai.usage.audio.input_tokens"], attrs["gen_ai.usage.audio.output_tokens"]) \
        == (40, 30)
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (100, 50)


def test_anthropic_cache_reads_and_writes_reach_the_span(spans, anthropic) -> None:
    fake, url = anthropic
    claude = create_backend("anthropic:claude-sonnet-4-6", base_url=url, api_key=ANTHROPIC_KEY,
                            max_retries=0)
    fake.reply([{"type": "text", "text": "hi"}], input_tokens=12, output_tokens=5,
               cache_creation_input_tokens=1800, cache_read_input_tokens=0)
    claude.chat(ChatRequest(messages=ASK, max_tokens=64))
    fake.reply([{"type": "text", "text": "hi"}], input_tokens=12, output_tokens=6,
               cache_creation_input_tokens=0, cache_read_input_tokens=1800)
    list(claude.stream(ChatRequest(messages=ASK, max_tokens=64)))
    written, read = spans.get_finished_spans()
    assert written.attributes["gen_ai.provider.name"] == "anthropic"
    assert written.attributes["gen_ai.response.id"] == "msg_fake0001"
    assert written.attributes["gen_ai.usage.input_tokens"] == 12 + 1800
    assert written.attributes["gen_ai.usage.cache_creation.input_tokens"] == 1800
    assert "gen_ai.usage.cache_read.input_tokens" not in written.attributes
    assert read.attributes["gen_ai.response.id"] == "msg_fake0002"
    assert read.attributes["gen_ai.usage.cache_read.input_tokens"] == 1800
    assert read.attributes["gen_ai.usage.output_tokens"] == 6
    assert read.attributes["gen_ai.response.finish_reasons"] == ("stop",)


def test_embeddings_span(spans, openai) -> None:
    _, url = openai
    embedder = create_backend("openai:text-embedding-3-small", base_url=url, api_key=OPENAI_KEY,
                              max_retries=0)
    vectors = embedder.embed(["a", "bc"])
    span = _one(spans.get_finished_spans(), "embeddings text-embedding-3-small")
    assert span.attributes["gen_ai.operation.name"] == "embeddings"
    assert span.attributes["gen_ai.embeddings.dimension.count"] == len(vectors[0]) \
        == len(embedding_of("a"))


def test_without_a_tracer_provider_nothing_is_traced(provider, smollm2) -> None:
    _, exporter = provider
    exporter.clear()
    tracing.configure(tracer_provider=None)  # and no global provider is set in this process
    assert tracing.tracer() is None
    smollm2.chat(ChatRequest(messages=ASK, max_tokens=2))
    assert not exporter.get_finished_spans()


def test_a_fallback_run_has_one_child_span_per_attempt(spans, smollm2) -> None:
    from langchain_modelplug import ChatModelPlug, FallbackChatModel

    dead = ChatModelPlug(model="vllm:dead", base_url=_dead_url(), max_retries=0, timeout=5)
    local = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=4)
    answer = FallbackChatModel([dead, local], health=False).invoke("Hi")
    finished = spans.get_finished_spans()
    assert _tree(finished)["modelplug.fallback"] == ["modelplug.attempt vllm:dead",
                                                     "modelplug.attempt llamacpp:smollm2"]
    run = _one(finished, "modelplug.fallback")
    assert run.attributes["modelplug.fallback.answered_by"] == "llamacpp:smollm2"
    assert run.attributes["modelplug.fallback.attempts"] == 2
    failed = _one(finished, "modelplug.attempt vllm:dead")
    assert failed.attributes["error.type"] == "ProviderUnavailableError"
    assert failed.status.status_code is StatusCode.ERROR
    assert _tree(finished)["modelplug.attempt vllm:dead"] == ["chat dead"]
    assert _one(finished, "chat dead").attributes["error.type"] == "ProviderUnavailableError"
    assert _tree(finished)["modelplug.attempt llamacpp:smollm2"] == ["chat smollm2"]
    chat = _one(finished, "chat smollm2")
    assert chat.attributes["gen_ai.usage.output_tokens"] == \
        answer.usage_metadata["output_tokens"]

    # Streamed: the answering attempt's span stays open until the stream ends.
    spans.clear()
    chunks = list(FallbackChatModel([dead, local], health=False).stream("Hi"))
    finished = spans.get_finished_spans()
    assert _tree(finished)["modelplug.fallback"] == ["modelplug.attempt vllm:dead",
                                                     "modelplug.attempt llamacpp:smollm2"]
    streamed = _one(finished, "chat smollm2")
    assert streamed.attributes["gen_ai.request.stream"] is True
    assert streamed.attributes["gen_ai.usage.output_tokens"] == sum(
        (c.usage_metadata or {}).get("output_tokens", 0) for c in chunks)
    attempt = _one(finished, "modelplug.attempt llamacpp:smollm2")
    assert attempt.end_time >= streamed.end_time


def test_a_skipped_candidate_is_an_event_of_the_run(spans) -> None:
    from langchain_core.tools import tool

    from langchain_modelplug import ChatModelPlug, FallbackChatModel
    from modelplug import FallbackExhaustedError

    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    dead = ChatModelPlug(model="vllm:dead", base_url=_dead_url(), max_retries=0, timeout=5)
    no_tools = ChatModelPlug(model="vllm:plain", base_url=_dead_url(), max_retries=0,
                             profile={"tool_calling": False})
    with pytest.raises(FallbackExhaustedError):
        FallbackChatModel([no_tools, dead], health=False).bind_tools([add]).invoke("2+3?")
    run = _one(spans.get_finished_spans(), "modelplug.fallback")
    assert [e.name for e in run.events] == ["modelplug.fallback.skip", "exception"]
    assert run.events[0].attributes["modelplug.fallback.candidate"] == "vllm:plain"
    assert run.events[0].attributes["error.type"] == "UnsupportedCapabilityError"
    assert run.attributes["error.type"] == "FallbackExhaustedError"


def test_llama_index_fallback_spans(spans) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.modelplug import FallbackLLM, ModelPlug

    dead = ModelPlug(model="vllm:dead", base_url=_dead_url(), max_retries=0, timeout=5)
    local = ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=4)
    asyncio.run(FallbackLLM([dead, local], health=False).achat(
        [ChatMessage(role="user", content="Hi")]))
    finished = spans.get_finished_spans()
    assert _tree(finished)["modelplug.fallback"] == ["modelplug.attempt vllm:dead",
                                                     "modelplug.attempt llamacpp:smollm2"]
    assert _tree(finished)["modelplug.attempt llamacpp:smollm2"] == ["chat smollm2"]


# -- the instrumentations users already run -------------------------------------------------


@pytest.fixture
def openinference_langchain(provider) -> Iterator[InMemorySpanExporter]:
    from openinference.instrumentation.langchain import LangChainInstrumentor

    tracer_provider, exporter = provider
    exporter.clear()
    tracing.configure(tracer_provider=tracer_provider, enabled=False)  # theirs alone
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    yield exporter
    instrumentor.uninstrument()
    tracing.configure(tracer_provider=None, enabled=True)
    exporter.clear()


def test_openinference_langchain_sees_the_real_provider_and_model(openinference_langchain,
                                                                  ) -> None:
    from langchain_modelplug import ChatModelPlug

    answer = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=4).invoke("Hi")
    span = _one(openinference_langchain.get_finished_spans(), "ChatModelPlug")
    attrs = span.attributes
    assert attrs["llm.provider"] == "llamacpp"
    assert attrs["llm.model_name"] == answer.response_metadata["model_name"] == "smollm2"
    assert attrs["llm.token_count.prompt"] == answer.usage_metadata["input_tokens"]
    assert attrs["llm.token_count.completion"] == answer.usage_metadata["output_tokens"]


def test_openinference_langchain_fallback_shows_each_attempt(openinference_langchain) -> None:
    from langchain_modelplug import ChatModelPlug, FallbackChatModel

    dead = ChatModelPlug(model="vllm:dead", base_url=_dead_url(), max_retries=0, timeout=5)
    local = ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=4)
    answer = FallbackChatModel([dead, local], health=False).invoke("Hi")
    finished = openinference_langchain.get_finished_spans()
    run = _one(finished, "FallbackChatModel")
    assert run.attributes["llm.model_name"] == "smollm2"  # the model that answered
    assert run.attributes["llm.token_count.completion"] == answer.usage_metadata["output_tokens"]
    attempts = sorted((s for s in finished if s.name == "ChatModelPlug"),
                      key=lambda s: s.start_time)
    assert [s.parent.span_id for s in attempts] == [run.context.span_id] * 2
    failed, answered = attempts
    assert (failed.attributes["llm.provider"], failed.attributes["llm.model_name"]) == \
        ("vllm", "dead")
    assert failed.status.status_code is StatusCode.ERROR
    assert "ProviderUnavailableError" in failed.status.description
    assert (answered.attributes["llm.provider"], answered.attributes["llm.model_name"]) == \
        ("llamacpp", "smollm2")
    assert answered.status.status_code is StatusCode.OK
    # Tokens are counted once in the trace: on the fallback run, not again on the attempt.
    assert "llm.token_count.completion" not in answered.attributes


@contextmanager
def _patches_undone(*owners: Any) -> Iterator[None]:
    """Put back every attribute of ``owners`` that the block replaced. OpenTelemetry's LangChain
    instrumentation leaves most of its wrappers in place after ``uninstrument()`` (its
    ``unwrap`` of a class attribute by module path is a no-op here), and the wrapped
    ``BaseCallbackManager.__init__``, ``Pregel.stream`` and ``AgentMiddleware`` hooks made later
    tests' agents loop to GraphRecursionError."""
    saved = [(owner, dict(vars(owner))) for owner in owners]
    try:
        yield
    finally:
        for owner, before in saved:
            for name, value in before.items():
                if vars(owner).get(name) is not value:
                    setattr(owner, name, value)


def _langchain_patch_targets() -> list[Any]:
    import langchain.agents
    import langchain.agents.factory
    import langgraph.prebuilt
    import langgraph.prebuilt.chat_agent_executor
    from langchain.agents.middleware.types import AgentMiddleware
    from langchain_core.callbacks import BaseCallbackManager
    from langgraph.pregel import Pregel
    from langgraph.types import Command

    return [BaseCallbackManager, Pregel, Command, AgentMiddleware, langchain.agents,
            langchain.agents.factory, langgraph.prebuilt, langgraph.prebuilt.chat_agent_executor]


def test_otel_langchain_instrumentation_reports_the_answering_model(provider) -> None:
    from opentelemetry.instrumentation.langchain import LangchainInstrumentor

    from langchain_modelplug import ChatModelPlug

    tracer_provider, exporter = provider
    exporter.clear()
    instrumentor = LangchainInstrumentor()
    with _patches_undone(*_langchain_patch_targets()):
        instrumentor.instrument(tracer_provider=tracer_provider)
        tracing.configure(tracer_provider=tracer_provider)
        try:
            answer = ChatModelPlug(model="llamacpp:smollm2", temperature=0,
                                   max_tokens=4).invoke("Hi")
        finally:
            instrumentor.uninstrument()
            tracing.configure(tracer_provider=None)
    finished = exporter.get_finished_spans()
    theirs = _one(finished, "ChatModelPlug.chat")
    assert theirs.attributes["gen_ai.response.model"] == "smollm2"
    assert theirs.attributes["gen_ai.usage.output_tokens"] == answer.usage_metadata[
        "output_tokens"]
    # Their span names the provider after the class ("langchain"); modelplug's own names it.
    ours = _one(finished, "chat smollm2")
    assert ours.attributes["gen_ai.provider.name"] == "llamacpp"
    assert ours.attributes["gen_ai.usage.output_tokens"] == answer.usage_metadata[
        "output_tokens"]


def test_openinference_llama_index_nests_modelplug_spans(provider) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.modelplug import ModelPlug
    from openinference.instrumentation.llama_index import LlamaIndexInstrumentor

    tracer_provider, exporter = provider
    exporter.clear()
    instrumentor = LlamaIndexInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    tracing.configure(tracer_provider=tracer_provider)
    try:
        response = ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=4).chat(
            [ChatMessage(role="user", content="Hi")])
    finally:
        instrumentor.uninstrument()
        tracing.configure(tracer_provider=None)
    finished = exporter.get_finished_spans()
    theirs = _one(finished, "ModelPlug.chat")
    assert theirs.attributes["llm.model_name"] == "llamacpp:smollm2"
    assert theirs.attributes["llm.token_count.completion"] == \
        response.raw["usage"]["completion_tokens"]
    assert _tree(finished)["ModelPlug.chat"] == ["chat smollm2"]
    assert _one(finished, "chat smollm2").attributes["gen_ai.provider.name"] == "llamacpp"


def test_openinference_llama_index_shows_each_fallback_attempt(provider) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.modelplug import FallbackLLM, ModelPlug
    from openinference.instrumentation.llama_index import LlamaIndexInstrumentor

    tracer_provider, exporter = provider
    exporter.clear()
    instrumentor = LlamaIndexInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        dead = ModelPlug(model="vllm:dead", base_url=_dead_url(), max_retries=0, timeout=5)
        local = ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=4)
        response = FallbackLLM([dead, local], health=False).chat(
            [ChatMessage(role="user", content="Hi")])
    finally:
        instrumentor.uninstrument()
    finished = exporter.get_finished_spans()
    run = _one(finished, "FallbackLLM.chat")
    attempts = sorted((s for s in finished if s.name == "ModelPlug.chat"),
                      key=lambda s: s.start_time)
    assert [s.parent.span_id for s in attempts] == [run.context.span_id] * 2
    failed, answered = attempts
    assert failed.attributes["llm.model_name"] == "vllm:dead"
    assert failed.status.status_code is StatusCode.ERROR
    assert answered.attributes["llm.model_name"] == "llamacpp:smollm2"
    assert answered.attributes["llm.token_count.completion"] == \
        response.raw["usage"]["completion_tokens"]
