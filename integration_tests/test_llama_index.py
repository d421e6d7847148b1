"""LlamaIndex end to end on real models: RAG, chat engines, agents and structured output.

Each test runs twice: on the in-process SmolLM2 GGUF (``llamacpp:``) and through the
OpenAI-compatible provider on a real llama-server running the same file (``llamaserver:``). The
path is LlamaIndex -> ModelPlug / ModelPlugEmbedding -> modelplug backend -> the real model; the
only thing set by hand is ``Settings`` (its defaults are OpenAI, unreachable here).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.agent.workflow import (
    AgentOutput,
    AgentStream,
    FunctionAgent,
    ToolCall,
    ToolCallResult,
)
from llama_index.core.base.response.schema import AsyncStreamingResponse, StreamingResponse
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.embedding import EmbeddingEndEvent
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.embeddings.modelplug import ModelPlugEmbedding
from llama_index.llms.modelplug import FallbackLLM, ModelPlug
from pydantic import BaseModel

from modelplug.errors import UnsupportedCapabilityError

BACKENDS = ["llamacpp", "llamaserver"]
CASTLE = "The secret password of the blue castle is marmalade."
DOCS = [
    CASTLE,
    "Bananas are yellow fruits that grow in tropical countries.",
    "The Eiffel Tower is a wrought-iron tower in Paris, France.",
]
QUESTION = "What is the secret password of the blue castle?"
PARIS = "What is the capital of France? Answer in one sentence."
#: llama-server (the llama.cpp that llama-cpp-python 0.3.36 vendors) would answer SmolLM2 in plain
#: text whatever the tools: the model's chat template renders no tool calls. Its /props says so,
#: and the backend refuses a tool request up front (UnsupportedCapabilityError, before sending).
NO_SERVER_TOOLS = pytest.mark.xfail(
    strict=True, raises=UnsupportedCapabilityError,
    reason="llama-server's /props says SmolLM2's template renders no tool calls, so the backend "
           "refuses the tool request before sending it")
# FunctionAgent reads metadata.is_function_calling_model before its first request. The backend
# asks /props only before a request (construction stays offline), so the agent is refused by the
# request (UnsupportedCapabilityError) when it is this backend's first, and by LlamaIndex's own
# metadata check (ValueError: "LLM must be a FunctionCallingLLM") once an earlier test has asked.
NO_SERVER_TOOLS_AGENT = pytest.mark.xfail(
    strict=True, raises=(UnsupportedCapabilityError, ValueError),
    reason="llama-server's /props says SmolLM2's template renders no tool calls: refused by the "
           "request, or by FunctionAgent's metadata check once the backend has asked /props")


class City(BaseModel):
    """A city and the country it is in."""

    name: str
    country: str


def magic_function(input: int) -> int:
    """Applies a magic function to an input."""
    return input + 2


def _models(backend: str, request: pytest.FixtureRequest) -> tuple[ModelPlug, ModelPlugEmbedding]:
    if backend == "llamacpp":
        return (ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=48),
                ModelPlugEmbedding(model="llamacpp:smollm2"))
    return (ModelPlug(model="llamaserver:smollm2", base_url=request.getfixturevalue(
                "llama_server_v1"), temperature=0, max_tokens=48),
            ModelPlugEmbedding(model="llamaserver:smollm2", base_url=request.getfixturevalue(
                "llama_server_embeddings")))


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def models(backend: str,
           request: pytest.FixtureRequest) -> Iterator[tuple[ModelPlug, ModelPlugEmbedding]]:
    """The LLM and embedding model, also installed as LlamaIndex's Settings for the module."""
    llm, embed = _models(backend, request)
    saved = (Settings._llm, Settings._embed_model)
    Settings.llm, Settings.embed_model = llm, embed
    yield llm, embed
    Settings._llm, Settings._embed_model = saved


@pytest.fixture(scope="module")
def llm(models: tuple[ModelPlug, ModelPlugEmbedding]) -> ModelPlug:
    return models[0]


@pytest.fixture(scope="module")
def embed(models: tuple[ModelPlug, ModelPlugEmbedding]) -> ModelPlugEmbedding:
    return models[1]


@pytest.fixture(scope="module")
def index(embed: ModelPlugEmbedding) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=embed)


class _EmbeddingBatches(BaseEventHandler):
    """Records the texts of every embedding call LlamaIndex makes (its own instrumentation)."""

    batches: list[list[str]] = []

    @classmethod
    def class_name(cls) -> str:
        return "EmbeddingBatches"

    def handle(self, event: object, **kwargs: object) -> None:
        if isinstance(event, EmbeddingEndEvent):
            self.batches.append(list(event.chunks))


# -- embeddings -----------------------------------------------------------------------------------


def test_embedding_batches_match_single_texts(embed: ModelPlugEmbedding) -> None:
    texts = [f"Sentence number {i} about castles." for i in range(5)]
    handler = _EmbeddingBatches(batches=[])
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    try:
        batched = ModelPlugEmbedding(model=embed.model, embed_batch_size=2,
                                     base_url=embed.base_url).get_text_embedding_batch(texts)
    finally:
        dispatcher.event_handlers.remove(handler)
    assert [len(b) for b in handler.batches] == [2, 2, 1]  # one call per batch
    assert len(batched) == 5 and len({len(v) for v in batched}) == 1
    for text, vector in zip(texts, batched, strict=True):
        single = embed.get_text_embedding(text)
        assert sum(a * b for a, b in zip(single, vector, strict=True)) == pytest.approx(
            sum(a * a for a in single), rel=1e-3)


async def test_async_embeddings(embed: ModelPlugEmbedding) -> None:
    query = await embed.aget_query_embedding(QUESTION)
    texts = await embed.aget_text_embedding_batch(DOCS)
    assert len(texts) == 3 and all(len(v) == len(query) for v in texts)
    # The castle sentence is the nearest to the castle question.
    scores = [sum(a * b for a, b in zip(query, v, strict=True)) for v in texts]
    assert max(range(3), key=scores.__getitem__) == 0


# -- query engines --------------------------------------------------------------------------------


def test_query_engine_from_settings(index: VectorStoreIndex) -> None:
    response = index.as_query_engine(similarity_top_k=1).query(QUESTION)  # Settings.llm
    assert "marmalade" in str(response).lower()
    assert [n.node.get_content() for n in response.source_nodes] == [CASTLE]


async def test_query_engine_async(index: VectorStoreIndex, llm: ModelPlug) -> None:
    response = await index.as_query_engine(llm=llm, similarity_top_k=1).aquery(QUESTION)
    assert "marmalade" in str(response).lower()
    assert response.source_nodes[0].node.get_content() == CASTLE


def test_query_engine_streaming(index: VectorStoreIndex, llm: ModelPlug) -> None:
    response = index.as_query_engine(llm=llm, similarity_top_k=1, streaming=True).query(QUESTION)
    assert isinstance(response, StreamingResponse)
    tokens = list(response.response_gen)
    assert len(tokens) > 1
    assert "marmalade" in "".join(tokens).lower()


async def test_query_engine_async_streaming(index: VectorStoreIndex, llm: ModelPlug) -> None:
    engine = index.as_query_engine(llm=llm, similarity_top_k=1, streaming=True)
    response = await engine.aquery(QUESTION)
    assert isinstance(response, AsyncStreamingResponse)
    tokens = [t async for t in response.async_response_gen()]
    assert len(tokens) > 1
    assert "marmalade" in "".join(tokens).lower()


# -- chat engine ----------------------------------------------------------------------------------


def test_condense_plus_context_chat_engine(index: VectorStoreIndex, llm: ModelPlug) -> None:
    engine = index.as_chat_engine(chat_mode="condense_plus_context", llm=llm,
                                  similarity_top_k=1)
    first = engine.chat(QUESTION)
    assert "marmalade" in str(first).lower()
    # The second turn has history, so the question is condensed by the LLM first.
    second = engine.stream_chat("Tell me that password again.")
    text = "".join(second.response_gen)
    assert text.strip()
    assert second.source_nodes and second.source_nodes[0].node.get_content() == CASTLE
    history = engine.chat_history
    assert [m.role.value for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[-1].content == text


async def test_condense_plus_context_chat_engine_async(index: VectorStoreIndex,
                                                       llm: ModelPlug) -> None:
    engine = index.as_chat_engine(chat_mode="condense_plus_context", llm=llm,
                                  similarity_top_k=1)
    response = await engine.achat(QUESTION)
    assert "marmalade" in str(response).lower()


# -- agent ----------------------------------------------------------------------------------------


async def test_function_agent_streams_a_tool_call(llm: ModelPlug, backend: str,
                                                  request: pytest.FixtureRequest) -> None:
    if backend == "llamaserver":
        request.applymarker(NO_SERVER_TOOLS_AGENT)
    # return_direct: the tool's output is the answer, so the run is deterministic on a 135M
    # model (which, left to choose, keeps calling the tool rather than answering).
    tool = FunctionTool.from_defaults(fn=magic_function, return_direct=True)
    agent = FunctionAgent(tools=[tool], llm=llm, streaming=True,
                          initial_tool_choice="magic_function",
                          system_prompt="You answer with the tools you have.")
    handler = agent.run(user_msg="What is the value of magic_function(3)?", max_iterations=3)
    events = [event async for event in handler.stream_events()]
    result = await handler

    streams = [e for e in events if isinstance(e, AgentStream)]
    assert streams, "streaming=True gives AgentStream events"
    assert any(s.tool_calls and s.tool_calls[0].tool_name == "magic_function" for s in streams)
    [call] = [e for e in events if isinstance(e, ToolCall) and not isinstance(e, ToolCallResult)]
    assert call.tool_name == "magic_function" and call.tool_kwargs == {"input": 3}
    [done] = [e for e in events if isinstance(e, ToolCallResult)]
    assert done.tool_output.content == "5" and not done.tool_output.is_error
    assert any(isinstance(e, AgentOutput) for e in events)
    assert str(result) == "5"


# -- structured output ----------------------------------------------------------------------------


def test_structured_predict(llm: ModelPlug) -> None:
    prompt = PromptTemplate("{text}\nExtract the city and its country.")
    city = llm.structured_predict(City, prompt, text="Paris is the capital of France.")
    assert isinstance(city, City)
    assert city.name.lower() == "paris"


async def test_astructured_predict_and_structured_llm(llm: ModelPlug) -> None:
    prompt = PromptTemplate("{text}\nExtract the city and its country.")
    city = await llm.astructured_predict(City, prompt, text="Paris is the capital of France.")
    assert isinstance(city, City) and city.name.lower() == "paris"

    from llama_index.core.llms import ChatMessage

    structured = llm.as_structured_llm(City)
    response = await structured.achat([ChatMessage(
        role="user", content="Paris is the capital of France. Extract the city and country.")])
    assert isinstance(response.raw, City)
    assert City.model_validate_json(response.message.content) == response.raw


# -- FallbackLLM (the shared modelplug.fallback policy) -------------------------------------------


@pytest.fixture(scope="module")
def dead_url() -> str:
    """An OpenAI base URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def fallback(dead_url: str) -> FallbackLLM:
    dead = ModelPlug(model="llamaserver:down", base_url=dead_url, max_retries=0, timeout=5)
    return FallbackLLM([dead, "llamacpp:smollm2"], temperature=0, max_tokens=48)


def test_fallback_fails_over_on_a_refused_connection(fallback: FallbackLLM) -> None:
    from llama_index.core.llms import ChatMessage

    assert fallback.names == ["llamaserver:down", "llamacpp:smollm2"]
    assert fallback.metadata.is_function_calling_model
    messages = [ChatMessage(role="user", content=PARIS)]
    response = fallback.chat(messages)
    assert "Paris" in response.message.content
    assert response.additional_kwargs["fallback_model"] == "llamacpp:smollm2"
    steps = list(fallback.stream_chat(messages))
    assert steps[-1].message.content == response.message.content
    assert {s.additional_kwargs["fallback_model"] for s in steps} == {"llamacpp:smollm2"}
    assert "Paris" in fallback.complete(PARIS).text


async def test_fallback_async_and_agent(fallback: FallbackLLM) -> None:
    steps = [s async for s in await fallback.astream_complete(PARIS)]
    assert "Paris" in steps[-1].text
    tool = FunctionTool.from_defaults(fn=magic_function, return_direct=True)
    agent = FunctionAgent(tools=[tool], llm=fallback, streaming=True,
                          initial_tool_choice="magic_function")
    handler = agent.run(user_msg="What is the value of magic_function(3)?", max_iterations=3)
    events = [event async for event in handler.stream_events()]
    assert str(await handler) == "5"
    [done] = [e for e in events if isinstance(e, ToolCallResult)]
    assert done.tool_kwargs == {"input": 3}


def test_fallback_structured_predict(fallback: FallbackLLM) -> None:
    prompt = PromptTemplate("{text}\nExtract the city and its country.")
    city = fallback.structured_predict(City, prompt, text="Paris is the capital of France.")
    assert isinstance(city, City) and city.name.lower() == "paris"


def test_fallback_raises_permanent_errors_and_reports_exhaustion(fallback: FallbackLLM,
                                                                 dead_url: str) -> None:
    from llama_index.core.base.llms.types import AudioBlock
    from llama_index.core.llms import ChatMessage

    from modelplug.errors import FallbackExhaustedError

    # A request no candidate could take (a bad input) is raised at once, not masked.
    audio = ChatMessage(role="user", blocks=[AudioBlock(audio=b"RIFF0000", format="wav")])
    with pytest.raises(ValueError, match="AudioBlock"):
        fallback.chat([audio])
    both_dead = FallbackLLM([
        ModelPlug(model="llamaserver:a", base_url=dead_url, max_retries=0),
        ModelPlug(model="vllm:b", base_url=dead_url, max_retries=0),
    ])
    with pytest.raises(FallbackExhaustedError) as info:
        both_dead.complete("Hello")
    assert [name for name, _ in info.value.errors] == ["llamaserver:a", "vllm:b"]


def test_fallback_raises_caller_errors_without_trying_the_next_candidate(dead_url: str) -> None:
    from llama_index.core.llms import ChatMessage

    from modelplug.errors import ConfigurationError, FallbackExhaustedError

    calls: list[str] = []

    class Recording(ModelPlug):
        def _chat(self, messages, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(self.model)
            return super()._chat(messages, **kwargs)

    fallback = FallbackLLM([ModelPlug(model="llamacpp:smollm2", max_tokens=8),
                            Recording(model="llamacpp:smollm2", max_tokens=8)])
    with pytest.raises(ConfigurationError, match="Pass at least one message") as info:
        fallback.chat([])
    assert not isinstance(info.value, (UnsupportedCapabilityError, FallbackExhaustedError))
    with pytest.raises(ConfigurationError, match="Unknown response_format type 'xml'"):
        fallback.chat([ChatMessage(role="user", content="hi")], response_format={"type": "xml"})
    assert calls == []  # the second candidate was never called


@pytest.mark.parametrize("call", ["complete", "stream_complete", "acomplete",
                                  "astream_complete"])
async def test_one_completion_is_one_llm_event(call: str) -> None:
    """complete() and its twins run the chat internals, not the decorated chat(): callbacks see
    one LLM event per call, so TokenCountingHandler counts it once."""
    from llama_index.core.callbacks import CallbackManager, TokenCountingHandler

    counter = TokenCountingHandler(tokenizer=str.split)
    llm = ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=8,
                    callback_manager=CallbackManager([counter]))
    result = getattr(llm, call)(PARIS)
    if call == "stream_complete":
        text = [step for step in result][-1].text
    elif call == "acomplete":
        text = (await result).text
    elif call == "astream_complete":
        text = [step async for step in await result][-1].text
    else:
        text = result.text
    assert text
    assert len(counter.llm_token_counts) == 1, counter.llm_token_counts
    assert counter.completion_llm_token_count > 0
