"""LangChain's standard chat-model integration suite for ``llamaserver:`` against a real
llama-server running SmolLM2-135M-Instruct.

Expected failures state a limit of the 135M model, never one of modelplug's: the same tests
run against the wire fakes and larger servers pass through the same code.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_modelplug import ChatModelPlug

TINY_JOKE_ON_SERVER = ("SmolLM2-135M's Joke varies with llama-server's prompt-cache history "
                       "(see the comment above the overrides); json_schema and json_mode "
                       "requests themselves are tested in test_openai_compat.py")


class TestLlamaServerStandard(ChatModelIntegrationTests):
    _base_url: str = ""

    @pytest.fixture(autouse=True)
    def _server(self, llama_server_v1: str) -> None:
        # The server's port is only known at run time; autouse fixtures run before `model`.
        type(self)._base_url = llama_server_v1

    @property
    def chat_model_class(self) -> type[ChatModelPlug]:
        return ChatModelPlug

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Some suite tests (test_stop_sequence) build the model from these params alone: without
        # max_tokens a looping 135M model runs to the end of the 4k context (2.5 min a call).
        return {"model": "llamaserver:smollm2", "base_url": self._base_url, "temperature": 0,
                "max_tokens": 100}

    @property
    def has_tool_calling(self) -> bool:
        # A limit of this model, not of the backend: SmolLM2-135M's chat template has no tool
        # support, so llama-server renders no tools into its prompt and does not constrain a
        # call even when one is forced (tool_choice="required" returns plain text). The tool
        # paths (request fields, streamed deltas, parsing) are tested at the wire in
        # test_openai_wire.py.
        return False

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    # The 135M model's Joke depends on the server's prompt-cache history: llama-server reuses the
    # KV of a shared prefix from earlier requests, and a prefix computed in another batch shape
    # gives slightly different logits, so greedy output changes with test order. On some
    # histories it loops inside the grammar-constrained 'setup' string until max_tokens, on
    # others it finishes. Hence non-strict. The same request path is tested deterministically
    # with a schema this model can fill in test_openai_compat.py::test_structured_output_json_schema.
    @pytest.mark.xfail(reason=TINY_JOKE_ON_SERVER, strict=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model: BaseChatModel, schema_type: str) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=TINY_JOKE_ON_SERVER, strict=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model: BaseChatModel, schema_type: str) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=TINY_JOKE_ON_SERVER, strict=False)
    def test_structured_output_pydantic_2_v1(self, model: BaseChatModel) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason="SmolLM2-135M in JSON mode writes its own keys ('setup_json', "
                       "nested objects) instead of the Joke's setup/punchline; "
                       + TINY_JOKE_ON_SERVER, strict=False)
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)

    @property
    def supports_image_inputs(self) -> bool:
        return False
