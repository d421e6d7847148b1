"""The LangChain surface beyond chat: ModelPlugLLM, ModelPlugEmbeddings in a retrieval chain,
LangChain's caches, callbacks, and chat_model() sharing in-process weights; all on the real
SmolLM2 GGUF."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.globals import set_llm_cache
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import SecretStr

from langchain_modelplug import (
    ChatModelPlug,
    ConfigurableChatModel,
    ModelPlugEmbeddings,
    ModelPlugLLM,
    chat_model,
)
from modelplug import UnsupportedCapabilityError
from modelplug.weights import loaded_keys

QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def llm() -> ChatModelPlug:
    return ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=16)


@pytest.fixture(scope="module")
def completion() -> ModelPlugLLM:
    return ModelPlugLLM(model="llamacpp:smollm2", temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def embeddings() -> ModelPlugEmbeddings:
    return ModelPlugEmbeddings(model="llamacpp:smollm2", batch_size=2)


# -- ModelPlugLLM -------------------------------------------------------------------------------


def test_llm_invoke_completes_the_raw_prompt(completion: ModelPlugLLM) -> None:
    text = completion.invoke("The capital of France is")
    assert isinstance(text, str) and "Paris" in text


def test_llm_generate_reports_usage_and_finish(completion: ModelPlugLLM) -> None:
    result = completion.generate(["The capital of France is", "1, 2, 3,"])
    assert len(result.generations) == 2
    usage = result.llm_output["token_usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] in ("stop", "length")


def test_llm_stream(completion: ModelPlugLLM) -> None:
    pieces = list(completion.stream("1, 2, 3,"))
    assert len(pieces) > 2
    assert "4" in "".join(pieces)


def test_llm_stop_sequence(completion: ModelPlugLLM) -> None:
    text = completion.invoke("1, 2, 3,", stop=["5"])
    assert "5" not in text and "4" in text


async def test_llm_async(completion: ModelPlugLLM) -> None:
    assert "Paris" in await completion.ainvoke("The capital of France is")
    pieces = [p async for p in completion.astream("1, 2, 3,")]
    assert "4" in "".join(pieces)


def test_llm_streaming_flag_uses_the_stream(completion: ModelPlugLLM) -> None:
    streaming = ModelPlugLLM(model="llamacpp:smollm2", temperature=0, max_tokens=8,
                             streaming=True)
    assert streaming.invoke("The capital of France is") == completion.invoke(
        "The capital of France is")


def test_llm_refuses_a_provider_without_completion() -> None:
    llm = ModelPlugLLM(model="anthropic:claude-sonnet-4-6", api_key="sk-test")
    with pytest.raises(UnsupportedCapabilityError, match="ChatModelPlug"):
        llm.invoke("Hello")


# -- ChatModelPlug's native batch -----------------------------------------------------------------

IMAGE = HumanMessage(content=[  # SmolLM2 takes no images: refused before any generation
    {"type": "text", "text": "What is this?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}])


def test_native_batch_fails_only_the_bad_item(llm: ChatModelPlug) -> None:
    events = Events()
    good, bad = llm.batch([QUESTION, [IMAGE]], config={"callbacks": [events]},
                          return_exceptions=True)
    assert isinstance(good, AIMessage) and "Paris" in good.content
    assert isinstance(bad, UnsupportedCapabilityError) and "image inputs" in str(bad)
    assert sorted(events.events) == ["end", "error", "start", "start"]
    with pytest.raises(UnsupportedCapabilityError, match="image inputs"):
        llm.batch([QUESTION, [IMAGE]])


async def test_native_abatch_fails_only_the_bad_item(llm: ChatModelPlug) -> None:
    bad, good = await llm.abatch([[IMAGE], QUESTION], return_exceptions=True)
    assert isinstance(bad, UnsupportedCapabilityError)
    assert isinstance(good, AIMessage) and "Paris" in good.content
    with pytest.raises(UnsupportedCapabilityError):
        await llm.abatch([[IMAGE], QUESTION])


# -- ModelPlugEmbeddings and a retrieval chain ----------------------------------------------------


def test_embeddings_batched_in_order(embeddings: ModelPlugEmbeddings,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["Paris is in France.", "Bananas are yellow.", "Rome is in Italy."]
    sent: list[list[str]] = []
    embed = embeddings.backend.embed

    def counting(batch: list[str]) -> list[list[float]]:
        sent.append(list(batch))
        return embed(batch)

    monkeypatch.setattr(embeddings.backend, "embed", counting)
    vectors = embeddings.embed_documents(texts)
    assert sent == [texts[:2], texts[2:]]  # batch_size=2: two backend calls, in order
    monkeypatch.undo()
    assert len(vectors) == 3 and {len(v) for v in vectors} == {576}
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-3) for v in vectors)
    one_by_one = [embeddings.embed_query(t) for t in texts]
    for a, b in zip(vectors, one_by_one, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
    assert embeddings.embed_documents([]) == []


async def test_embeddings_async(embeddings: ModelPlugEmbeddings) -> None:
    vectors = await embeddings.aembed_documents(["a", "b", "c"])
    assert len(vectors) == 3
    query = await embeddings.aembed_query("a")
    assert max(abs(x - y) for x, y in zip(query, vectors[0], strict=True)) < 1e-4


DOCS = [
    "The capital of France is Paris.",
    "Bananas are a yellow fruit rich in potassium.",
    "Python is a programming language created by Guido van Rossum.",
]


class PromptRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[str] = []

    def on_chat_model_start(self, serialized, messages, **kwargs: Any) -> None:
        self.prompts.append("\n".join(str(m.content) for m in messages[0]))


def test_retrieval_chain(embeddings: ModelPlugEmbeddings, llm: ChatModelPlug) -> None:
    store = InMemoryVectorStore.from_texts(DOCS, embedding=embeddings)
    retriever = store.as_retriever(search_kwargs={"k": 1})
    [doc] = retriever.invoke("What is the capital of France?")
    assert doc.page_content == DOCS[0]

    def format_docs(docs: list[Document]) -> str:
        return "\n".join(d.page_content for d in docs)

    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer using this context:\n{context}"),
        ("human", "{question}"),
    ])
    chain = ({"context": retriever | format_docs, "question": RunnablePassthrough()}
             | prompt | llm | StrOutputParser())
    recorder = PromptRecorder()
    answer = chain.invoke("What is the capital of France?", config={"callbacks": [recorder]})
    assert "Paris" in answer
    [sent] = recorder.prompts
    assert DOCS[0] in sent  # the retrieved document reached the model


# -- caches ---------------------------------------------------------------------------------------


@pytest.fixture
def cache(request, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        from langchain_core.caches import InMemoryCache

        value = InMemoryCache()
    else:
        from langchain_community.cache import SQLiteCache

        value = SQLiteCache(database_path=str(tmp_path / "cache.db"))
    set_llm_cache(value)
    try:
        yield value
    finally:
        set_llm_cache(None)


class RunIds(BaseCallbackHandler):
    def __init__(self) -> None:
        self.run_ids: list[Any] = []

    def on_chat_model_start(self, serialized, messages, *, run_id, **kwargs: Any) -> None:
        self.run_ids.append(run_id)


@pytest.mark.parametrize("cache", ["memory", "sqlite"], indirect=True)
def test_llm_cache_hit_on_repeat(cache: Any) -> None:
    llm = ChatModelPlug(model="llamacpp:smollm2", temperature=0.9, max_tokens=12)
    runs = RunIds()
    first = llm.invoke(QUESTION, config={"callbacks": [runs]})
    second = llm.invoke(QUESTION, config={"callbacks": [runs]})
    assert len(runs.run_ids) == 2 and runs.run_ids[0] != runs.run_ids[1]
    # A hit returns the stored message: the first run's id, not the second run's, and
    # LangChain marks hits with a zero cost; a fresh generation would carry neither.
    assert second.id == first.id == f"lc_run--{runs.run_ids[0]}-0"
    assert second.content == first.content
    assert second.usage_metadata.get("total_cost") == 0
    assert "total_cost" not in first.usage_metadata


# -- callbacks -----------------------------------------------------------------------------------


class Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.tokens: list[str] = []
        self.end: Any = None

    def on_chat_model_start(self, serialized, messages, **kwargs: Any) -> None:
        self.events.append("start")

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.events.append("token")
        self.tokens.append(token)

    def on_llm_end(self, response, **kwargs: Any) -> None:
        self.events.append("end")
        self.end = response

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.events.append("error")


def test_callbacks_fire_with_usage(llm: ChatModelPlug) -> None:
    handler = Events()
    text = "".join(c.content for c in llm.stream(QUESTION, config={"callbacks": [handler]}))
    assert handler.events[0] == "start" and handler.events[-1] == "end"
    assert handler.events.count("token") > 2
    assert "".join(handler.tokens) == text
    message = handler.end.generations[0][0].message
    assert message.usage_metadata["output_tokens"] > 0
    assert message.usage_metadata["input_tokens"] > 0

    handler = Events()
    llm.invoke(QUESTION, config={"callbacks": [handler]})
    assert handler.events == ["start", "end"]
    assert handler.end.generations[0][0].message.usage_metadata["total_tokens"] > 0


# -- chat_model() -------------------------------------------------------------------------------


def test_chat_model_fixed_is_a_chat_model_plug() -> None:
    model = chat_model("llamacpp:smollm2", temperature=0)
    assert isinstance(model, ChatModelPlug) and model.temperature == 0
    with pytest.raises(ValueError, match="unknown setting"):
        chat_model("llamacpp:smollm2", configurable_fields=["tempreature"])


def test_chat_model_configurable_shares_loaded_weights() -> None:
    model = chat_model("llamacpp:smollm2", configurable_fields=["temperature", "max_tokens"],
                       config_prefix="llm", max_tokens=12)
    assert isinstance(model, ConfigurableChatModel)
    cold = model.model_for({"configurable": {"llm_temperature": 0}})
    hot = model.model_for({"configurable": {"llm_temperature": 0.7, "llm_max_tokens": 6}})
    assert cold is not hot and (cold.temperature, hot.temperature) == (0, 0.7)
    assert hot.max_tokens == 6
    assert "Paris" in model.invoke(QUESTION, config={"configurable": {"llm_temperature": 0}}
                                   ).content
    keys_before = loaded_keys()
    answer = model.invoke("Say hello.", config={"configurable": {"llm_temperature": 0.7}})
    assert isinstance(answer, AIMessage) and answer.usage_metadata["output_tokens"] <= 12
    # Two differently configured ChatModelPlugs drive one loaded Llama: the weights cache
    # handed both the same object, and no new model was loaded for the second configuration.
    assert loaded_keys() == keys_before
    assert cold.backend._loaded().model is hot.backend._loaded().model
    # Configuring the same settings again reuses the built model.
    assert model.model_for({"configurable": {"llm_temperature": 0}}) is cold


def test_chat_model_configurable_keys_do_not_share_a_model() -> None:
    """Two API keys (SecretStr, whose repr is masked alike) select two models."""
    model = chat_model("openai:gpt-4o-mini", configurable_fields=["api_key"], max_retries=0)
    first = model.model_for({"configurable": {"api_key": SecretStr("sk-first")}})
    second = model.model_for({"configurable": {"api_key": SecretStr("sk-second")}})
    assert first is not second
    assert second.api_key.get_secret_value() == "sk-second"
    assert model.model_for({"configurable": {"api_key": SecretStr("sk-first")}}) is first


def test_chat_model_configurable_replays_bind_tools() -> None:
    def magic_function(input: int) -> int:
        """Applies a magic function to an input."""
        return input + 2

    model = chat_model("llamacpp:smollm2", configurable_fields="any", max_tokens=32)
    bound = model.bind_tools([magic_function], tool_choice="any")
    message = bound.invoke("What is the value of magic_function(3)?",
                           config={"configurable": {"temperature": 0, "thread_id": "t1"}})
    assert message.tool_calls[0]["args"] == {"input": 3}
