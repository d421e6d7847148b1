"""ModelPlugEmbeddings: LangChain embeddings over modelplug backends."""

from __future__ import annotations

import asyncio

from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, Field

from langchain_modelplug._backend_fields import BackendFields


class ModelPlugEmbeddings(BackendFields, Embeddings):
    """Embeddings over any modelplug provider that has them.

    openai, gemini and the OpenAI-compatible servers use their embeddings endpoint, ollama its
    embed API, hf and llamacpp run the model in-process (llamacpp: the same GGUF loaded in
    embedding mode, mean-pooled and L2-normalised; the weights cache shares it).

    Setup:
        .. code-block:: bash

            pip install "langchain-modelplug[llamacpp]"   # or [openai], [ollama], [hf]

    Key init args:
        model: str | None
            ``"provider:model_id"`` (``"openai:text-embedding-3-small"``,
            ``"ollama:nomic-embed-text"``, ``"llamacpp:smollm2"``).
        batch_size: int
            Texts per backend call in ``embed_documents`` (default 64).
        timeout, max_retries, api_key, base_url
            Networked providers only, as for ``ChatModelPlug``.
        **provider kwargs
            Provider-specific settings (``model_path``, ``n_ctx`` for llamacpp).

    Instantiate:
        .. code-block:: python

            from langchain_modelplug import ModelPlugEmbeddings

            embeddings = ModelPlugEmbeddings(model="llamacpp:smollm2")

    Embed:
        .. code-block:: python

            vector = embeddings.embed_query("What is the capital of France?")
            vectors = embeddings.embed_documents(["Paris is in France.", "Rome is in Italy."])

    Async:
        .. code-block:: python

            await embeddings.aembed_query("Hello")
            await embeddings.aembed_documents(["Hello", "World"])

    Vector store:
        .. code-block:: python

            from langchain_core.vectorstores import InMemoryVectorStore

            store = InMemoryVectorStore.from_texts(texts, embedding=embeddings)
            retriever = store.as_retriever(search_kwargs={"k": 1})
    """

    batch_size: int = Field(default=64, gt=0)
    """Texts per backend call in ``embed_documents``."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    def _batches(self, texts: list[str]) -> list[list[str]]:
        return [texts[i:i + self.batch_size] for i in range(0, len(texts), self.batch_size)]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order, sent ``batch_size`` texts per backend call."""
        return [vector for batch in self._batches(list(texts))
                for vector in self._backend.embed(batch)]

    def embed_query(self, text: str) -> list[float]:
        return self._backend.embed([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        results = await asyncio.gather(*(self._backend.aembed(batch)
                                         for batch in self._batches(list(texts))))
        return [vector for batch in results for vector in batch]

    async def aembed_query(self, text: str) -> list[float]:
        return (await self._backend.aembed([text]))[0]
