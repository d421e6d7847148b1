"""langchain-tests' EmbeddingsUnitTests for ModelPlugEmbeddings (offline: construction reads at
most a GGUF header, and SDK clients are created on first use)."""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_modelplug import ModelPlugEmbeddings


class TestModelPlugEmbeddingsLlamaCpp(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[ModelPlugEmbeddings]:
        return ModelPlugEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "llamacpp:smollm2"}


class TestModelPlugEmbeddingsOpenAI(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[ModelPlugEmbeddings]:
        return ModelPlugEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "vllm:nomic-embed-text", "base_url": "http://127.0.0.1:9/v1",
                "max_retries": 0}


def test_provider_kwargs_are_checked() -> None:
    import pytest

    with pytest.raises(TypeError, match="n_ctx"):
        ModelPlugEmbeddings(model="vllm:x", n_ctx=512)
    model = ModelPlugEmbeddings(model="llamacpp:smollm2", n_ctx=512, batch_size=8)
    assert model.provider_kwargs == {"n_ctx": 512}
    with pytest.raises(ValueError, match="batch_size"):
        ModelPlugEmbeddings(model="llamacpp:smollm2", batch_size=0)
