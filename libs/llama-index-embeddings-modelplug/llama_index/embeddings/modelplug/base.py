"""ModelPlugEmbedding: a LlamaIndex embedding model over every modelplug backend with embeddings."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field
from llama_index.llms.modelplug.backend_fields import BackendFields


class ModelPlugEmbedding(BackendFields, BaseEmbedding):
    """Embeddings from any modelplug provider that has them.

    Providers with embeddings: OpenAI-compatible endpoints (``openai:``, ``llamaserver:``,
    ``vllm:``...), ``gemini:``, ``ollama:``, and in-process ``llamacpp:`` / ``hf:`` models.

    Setup:
        .. code-block:: bash

            pip install llama-index-embeddings-modelplug "modelplug[llamacpp]"  # or [openai]...

    Key init args:
        model: str | None
            ``"provider:model_id"`` (``"llamacpp:smollm2"``, ``"openai:text-embedding-3-small"``,
            ``"llamaserver:smollm2"``), or None for the first model available locally.
        embed_batch_size: int
            Texts per backend call (default 10): each batch is ONE ``embed`` call, which
            in-process models run as one batched forward pass.
        query_instruction / text_instruction: str | None
            Prefixes some embedding models expect (e.g. ``"query: "`` / ``"passage: "``).
        timeout, max_retries, api_key, base_url, **provider kwargs
            As for ``ModelPlug``; provider kwargs are checked against the provider's row
            (an unknown one, or timeout/max_retries for an in-process model, is a TypeError).

    Instantiate:
        .. code-block:: python

            from llama_index.core import Settings
            from llama_index.embeddings.modelplug import ModelPlugEmbedding

            Settings.embed_model = ModelPlugEmbedding(model="llamacpp:smollm2")

    Embed:
        .. code-block:: python

            embed = Settings.embed_model
            embed.get_text_embedding("Paris is the capital of France.")   # 576 floats
            embed.get_text_embedding_batch(["a", "b", "c"])              # one call per batch
            await embed.aget_query_embedding("capital of France?")       # no blocked loop

    In-process models run async calls in a worker thread, so the event loop stays free; the
    weights are shared with any ``ModelPlug`` naming the same model.
    """

    query_instruction: str | None = Field(
        default=None, description="Prefix for queries, for models that expect one.")
    text_instruction: str | None = Field(
        default=None, description="Prefix for documents, for models that expect one.")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.model_name == "unknown":
            self.model_name = self.model

    @classmethod
    def class_name(cls) -> str:
        return "ModelPlugEmbedding"

    def _query(self, text: str) -> str:
        return f"{self.query_instruction}{text}" if self.query_instruction else text

    def _texts(self, texts: list[str]) -> list[str]:
        if not self.text_instruction:
            return list(texts)
        return [f"{self.text_instruction}{t}" for t in texts]

    def _check(self, texts: list[str], vectors: list[Embedding]) -> list[Embedding]:
        if len(vectors) != len(texts):
            raise RuntimeError(
                f"'{self.model}' returned {len(vectors)} embeddings for {len(texts)} texts.")
        return vectors

    # -- sync -----------------------------------------------------------------------------------

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._check([query], self._backend.embed([self._query(query)]))[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        """One backend call for the whole batch (BaseEmbedding splits by embed_batch_size)."""
        if not texts:
            return []
        return self._check(texts, self._backend.embed(self._texts(texts)))

    # -- async ----------------------------------------------------------------------------------

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._check([query], await self._backend.aembed([self._query(query)]))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aget_text_embeddings([text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        return self._check(texts, await self._backend.aembed(self._texts(texts)))
