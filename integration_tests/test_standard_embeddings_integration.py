"""langchain-tests' EmbeddingsIntegrationTests for ModelPlugEmbeddings: the SmolLM2 GGUF in-process
(llama.cpp in embedding mode) and behind a real llama-server's /v1/embeddings."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from langchain_modelplug import ModelPlugEmbeddings


class TestModelPlugEmbeddingsLlamaCpp(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[ModelPlugEmbeddings]:
        return ModelPlugEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "llamacpp:smollm2", "batch_size": 2}


class TestModelPlugEmbeddingsLlamaServer(EmbeddingsIntegrationTests):
    _base_url: str = ""

    @pytest.fixture(autouse=True)
    def _server(self, llama_server_embeddings: str) -> None:
        # The server's port is only known at run time; autouse fixtures run before `model`.
        type(self)._base_url = llama_server_embeddings

    @property
    def embeddings_class(self) -> type[ModelPlugEmbeddings]:
        return ModelPlugEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "llamaserver:smollm2", "base_url": self._base_url, "max_retries": 0}
