"""The fields every adapter class shares (``BackendFields`` per framework): one declaration, the
same public surface on each class, each field documented the framework's way, and the framework
class's own construction hooks still run."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.embeddings.modelplug import ModelPlugEmbedding
from llama_index.llms.modelplug import ModelPlug
from llama_index.llms.modelplug.backend_fields import BackendFields as LlamaIndexFields
from pydantic import BaseModel

from langchain_modelplug import ChatModelPlug, ModelPlugEmbeddings, ModelPlugLLM
from langchain_modelplug._backend_fields import BackendFields as LangChainFields
from langchain_modelplug._backend_fields import GenerationFields

#: Nothing is sent: SDK clients are created on first use, and the discard port refuses at once.
OPENAI = {"model": "openai:gpt-4o-mini", "api_key": "sk-test", "base_url": "http://127.0.0.1:9/v1"}
SHARED = ("model", "timeout", "max_retries", "api_key", "base_url", "provider_kwargs")
CLASSES: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (ChatModelPlug, GenerationFields), (ModelPlugLLM, GenerationFields),
    (ModelPlugEmbeddings, LangChainFields), (ModelPlug, LlamaIndexFields),
    (ModelPlugEmbedding, LlamaIndexFields)]


@pytest.mark.parametrize(("cls", "fields"), CLASSES, ids=lambda c: c.__name__)
def test_each_class_takes_its_backend_fields_from_one_declaration(
        cls: type[Any], fields: type[BaseModel]) -> None:
    assert issubclass(cls, fields)
    for name in SHARED:
        assert name not in vars(cls).get("__annotations__", {}), f"{cls.__name__}.{name}"
        assert repr(cls.model_fields[name]) == repr(fields.model_fields[name])
    model = cls(**OPENAI, timeout=3, default_headers={"x-a": "1"})
    assert model.backend.ref.provider == "openai"
    assert model.provider_kwargs == {"default_headers": {"x-a": "1"}}  # a non-field keyword


@pytest.mark.parametrize("cls", [ModelPlug, ModelPlugEmbedding], ids=lambda c: c.__name__)
def test_llama_index_fields_are_described_and_the_key_never_serialized(cls: type[Any]) -> None:
    own = [n for n, f in cls.model_fields.items()
           if n in LlamaIndexFields.model_fields or n in vars(cls).get("__annotations__", {})]
    assert set(SHARED) <= set(own)
    assert [n for n in own if not cls.model_fields[n].description] == []
    assert "api_key" not in cls(**OPENAI).to_dict()


@pytest.mark.parametrize("cls", [ChatModelPlug, ModelPlugLLM], ids=lambda c: c.__name__)
def test_langchain_models_still_record_the_package_versions(cls: type[Any]) -> None:
    """BaseLanguageModel.model_post_init seeds metadata["lc_versions"] for tracing; a shared
    fields class with private attributes must not hide it."""
    from langchain_core.version import VERSION

    assert cls(**OPENAI).metadata["lc_versions"]["langchain-core"] == VERSION
