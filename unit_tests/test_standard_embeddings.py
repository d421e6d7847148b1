"""langchain-tests' EmbeddingsUnitTests for ModelPlugEmbeddings, one configuration per provider
row whose backend has embeddings (offline: construction reads at most a GGUF header, SDK
clients are created on first use, hf with ``allow_download=True`` loads nothing before a call).

``EMBEDDING_MODELS`` names one model per such row; the test classes are generated from it in
registry order, and ``test_every_embedding_row_has_a_configuration`` fails for an
embedding-capable row without one (or a configuration for a row without embeddings).
Networked rows pass ``timeout`` and ``max_retries`` too (ollama's native API has no retry, so it
gets ``timeout`` only); cloud rows also check construction from the row's API-key variable.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_modelplug import ModelPlugEmbeddings
from modelplug.backends import backend_class
from modelplug.backends.base import Backend
from modelplug.errors import UnsupportedCapabilityError
from modelplug.registry import providers

#: The discard port: a connection is refused at once.
CLOSED = "http://127.0.0.1:9"

#: provider key -> (test class suffix, embedding model id). Open-catalog ids are free-form and
#: nothing is sent here, so they are not checked against the service.
EMBEDDING_MODELS: dict[str, tuple[str, str]] = {
    "ollama": ("Ollama", "nomic-embed-text"),
    "hf": ("HF", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "llamacpp": ("LlamaCpp", "smollm2"),
    "openai": ("OpenAI", "text-embedding-3-small"),
    "gemini": ("Gemini", "text-embedding-004"),
    "lmstudio": ("LMStudio", "text-embedding-nomic-embed-text-v1.5"),
    "ollama-openai": ("OllamaOpenAI", "nomic-embed-text"),
    "hf-openai": ("HFOpenAI", "sentence-transformers/all-MiniLM-L6-v2"),
    "vllm": ("VLLM", "nomic-ai/nomic-embed-text-v1.5"),
    "llamaserver": ("LlamaServer", "nomic-embed-text"),
    "sglang": ("SGLang", "Alibaba-NLP/gte-Qwen2-1.5B-instruct"),
    "deepseek": ("DeepSeek", "deepseek-embedding"),
    "openrouter": ("OpenRouter", "openai/text-embedding-3-small"),
    "groq": ("Groq", "nomic-embed-text-v1_5"),
    "together": ("Together", "BAAI/bge-base-en-v1.5"),
    "fireworks": ("Fireworks", "nomic-ai/nomic-embed-text-v1.5"),
    "mistral": ("Mistral", "mistral-embed"),
    "xai": ("XAI", "v1"),
    "perplexity": ("Perplexity", "pplx-embed-v1-0.6b"),
    "deepinfra": ("DeepInfra", "BAAI/bge-base-en-v1.5"),
}

IN_PROCESS_SETTINGS: dict[str, dict[str, Any]] = {
    "llamacpp": {},  # the GGUF in ~/.cache/modelplug/models; only its header is read
    "hf": {"allow_download": True},  # the test HF cache is empty; nothing loads before a call
}


def embeds(key: str) -> bool:
    """Whether the row's backend implements embeddings (imports the backend module, no SDK)."""
    return backend_class(providers()[key]).embed is not Backend.embed


def offline_settings(key: str) -> dict[str, Any]:
    spec = providers()[key]
    if spec.in_process:
        return dict(IN_PROCESS_SETTINGS[key])
    if key == "ollama":  # native API: no retry
        return {"base_url": CLOSED, "timeout": 30}
    settings: dict[str, Any] = {"timeout": 30, "max_retries": 0}
    if spec.kind == "cloud":
        return {**settings, "api_key": "test-key"}
    return {**settings, "base_url": f"{CLOSED}/v1"}


class _EmbeddingsConfiguration(EmbeddingsUnitTests):
    provider: ClassVar[str]
    model_id: ClassVar[str]

    @property
    def embeddings_class(self) -> type[ModelPlugEmbeddings]:
        return ModelPlugEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": f"{self.provider}:{self.model_id}", **offline_settings(self.provider)}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        # A cloud row without api_key= constructs only when its variable is set.
        env = providers()[self.provider].api_key_env
        if env is None:
            return {}, {}, {}
        model = f"{self.provider}:{self.model_id}"
        return {env: "sk-from-env"}, {"model": model}, {"model": model}


def _embeddings_class(key: str) -> type[_EmbeddingsConfiguration]:
    suffix, model_id = EMBEDDING_MODELS[key]
    name = f"TestModelPlugEmbeddings{suffix}"
    return type(name, (_EmbeddingsConfiguration,), {
        "__module__": __name__, "__qualname__": name, "provider": key, "model_id": model_id,
        "__doc__": f"EmbeddingsUnitTests for '{key}:{model_id}'.",
    })


EMBEDDING_CLASSES = {key: _embeddings_class(key) for key in providers()
                     if key in EMBEDDING_MODELS}
globals().update({cls.__name__: cls for cls in EMBEDDING_CLASSES.values()})


def test_every_embedding_row_has_a_configuration() -> None:
    capable = {key for key in providers() if embeds(key)}
    assert capable - set(EMBEDDING_MODELS) == set(), "embedding rows without a configuration"
    assert set(EMBEDDING_MODELS) - capable == set(), "configurations for rows without embeddings"
    assert {"openai", "gemini", "ollama", "llamacpp", "hf", "vllm"} <= capable
    assert "anthropic" not in capable
    names = [cls.__name__ for cls in EMBEDDING_CLASSES.values()]
    assert len(set(names)) == len(names), "two configurations share a test class name"
    assert all(globals()[cls.__name__] is cls for cls in EMBEDDING_CLASSES.values())


@pytest.mark.parametrize("key", [k for k, s in providers().items() if s.kind == "cloud"
                                 and k in EMBEDDING_MODELS])
def test_cloud_without_a_key_is_refused_at_construction(
        key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes the init-from-env check meaningful: without the variable it fails."""
    monkeypatch.delenv(providers()[key].api_key_env, raising=False)
    with pytest.raises(ValueError, match=providers()[key].api_key_env):
        ModelPlugEmbeddings(model=f"{key}:{EMBEDDING_MODELS[key][1]}")


def test_rows_without_embeddings_refuse_before_any_request() -> None:
    model = ModelPlugEmbeddings(model="anthropic:claude-sonnet-4-6", api_key="test-key",
                                base_url=f"{CLOSED}")
    with pytest.raises(UnsupportedCapabilityError, match="no embeddings"):
        model.embed_query("hello")
    # closed catalogs: a chat model of openai/gemini is refused before the request
    chat = ModelPlugEmbeddings(model="openai:gpt-4o-mini", api_key="test-key",
                               base_url=f"{CLOSED}/v1", max_retries=0)
    with pytest.raises(UnsupportedCapabilityError, match="text-embedding-3-small"):
        chat.embed_documents(["hello"])


def test_provider_kwargs_are_checked() -> None:
    with pytest.raises(TypeError, match="n_ctx"):
        ModelPlugEmbeddings(model="vllm:x", n_ctx=512)
    model = ModelPlugEmbeddings(model="llamacpp:smollm2", n_ctx=512, batch_size=8)
    assert model.provider_kwargs == {"n_ctx": 512}
    with pytest.raises(ValueError, match="batch_size"):
        ModelPlugEmbeddings(model="llamacpp:smollm2", batch_size=0)
