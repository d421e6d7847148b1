"""langchain-tests' ChatModelUnitTests standard suite for ChatModelPlug.

The in-process configuration drops ``timeout``, ``max_retries`` and ``api_key`` from the suite's
standard params: seed 000's rule is that in-process providers refuse them (TypeError), which
``unit_tests/test_registry.py`` asserts. Construction reads only the GGUF header, no weights.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_modelplug import ChatModelPlug

IN_PROCESS_REFUSED = ("timeout", "max_retries", "api_key")


class TestChatModelPlugLlamaCpp(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatModelPlug]:
        return ChatModelPlug

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "llamacpp:smollm2"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = super().standard_chat_model_params
        return {k: v for k, v in params.items() if k not in IN_PROCESS_REFUSED}

    @property
    def has_tool_calling(self) -> bool:
        return True  # bind_tools binds; calling without tool support fails before generating

    @pytest.mark.xfail(reason="langchain-core's load(allowed_objects='all') admits only classes "
                       "in its own mapping, so no third-party package can pass this; the "
                       "round trip with an explicit allowlist is test_serialization_round_trip",
                       strict=True)
    def test_serdes(self, model: BaseChatModel, snapshot: Any) -> None:
        super().test_serdes(model, snapshot)


def test_serialization_round_trip() -> None:
    from langchain_core.load import dumpd, dumps, load

    model = ChatModelPlug(model="llamacpp:smollm2", temperature=0.2, max_tokens=7, n_ctx=2048)
    restored = load(dumpd(model), allowed_objects=[ChatModelPlug],
                    valid_namespaces=["langchain_modelplug"])
    assert isinstance(restored, ChatModelPlug)
    assert restored.model_dump() == model.model_dump()
    assert restored.profile["max_input_tokens"] == 2048  # provider kwargs survive
    assert "n_ctx" in dumps(model)


def test_in_process_refuses_what_the_suite_would_pass() -> None:
    for name, value in (("timeout", 60), ("max_retries", 2)):
        with pytest.raises(TypeError, match=f"takes no '{name}'"):
            ChatModelPlug(model="llamacpp:smollm2", **{name: value})


class _Networked(ChatModelUnitTests):
    """Offline: construction, binding and params only; no request is sent."""

    @property
    def chat_model_class(self) -> type[ChatModelPlug]:
        return ChatModelPlug

    @pytest.mark.xfail(reason="langchain-core's load(allowed_objects='all') admits only classes "
                       "in its own mapping; see test_serialization_round_trip", strict=True)
    def test_serdes(self, model: BaseChatModel, snapshot: Any) -> None:
        super().test_serdes(model, snapshot)


class TestChatModelPlugOpenAI(_Networked):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "openai:gpt-4o-mini", "api_key": "test-key"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return ({"OPENAI_API_KEY": "sk-from-env"}, {"model": "openai:gpt-4o-mini"},
                {"api_key": "sk-from-env"})


class TestChatModelPlugAnthropic(_Networked):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "anthropic:claude-sonnet-4-6", "api_key": "test-key"}


class TestChatModelPlugGemini(_Networked):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "gemini:gemini-2.5-flash", "api_key": "test-key"}


class TestChatModelPlugVLLM(_Networked):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "vllm:Qwen/Qwen3-8B", "base_url": "http://127.0.0.1:9/v1"}


class TestChatModelPlugOllama(_Networked):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "ollama:qwen3:8b", "base_url": "http://127.0.0.1:9"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The native Ollama API has no retry (seed 000): the suite's max_retries is refused.
        params = super().standard_chat_model_params
        return {k: v for k, v in params.items() if k not in ("max_retries", "api_key")}


def test_catalog_members_are_accepted_as_model_strings() -> None:
    """Seed 000: a catalog enum member is as good as its "provider:model_id" string, in every
    adapter; the field stores the string, so the object serializes as text."""
    from langchain_core.load import dumps
    from llama_index.embeddings.modelplug import ModelPlugEmbedding
    from llama_index.llms.modelplug import FallbackLLM, ModelPlug

    from langchain_modelplug import (
        FallbackChatModel,
        ModelPlugEmbeddings,
        ModelPlugLLM,
    )
    from modelplug import LlamaCppModel

    member = LlamaCppModel.SMOLLM2
    chat = ChatModelPlug(model=member, max_tokens=4)
    assert chat.model == "llamacpp:smollm2" and str(chat.backend.ref) == "llamacpp:smollm2"
    assert '"model": "llamacpp:smollm2"' in dumps(chat)
    assert ModelPlugLLM(model=member).model == "llamacpp:smollm2"
    assert ModelPlugEmbeddings(model=member).model == "llamacpp:smollm2"
    assert ModelPlug(model=member).model == "llamacpp:smollm2"
    assert ModelPlugEmbedding(model=member).model == "llamacpp:smollm2"
    assert FallbackChatModel([member]).names == ["llamacpp:smollm2"]
    assert FallbackLLM([member]).names == ["llamacpp:smollm2"]
    with pytest.raises(ValueError, match="model"):
        ChatModelPlug(model=42)  # anything else is still refused by the field
