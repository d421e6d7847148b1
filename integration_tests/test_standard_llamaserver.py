"""LangChain's standard chat-model integration suite for ``llamaserver:`` against a real
llama-server running SmolLM2-135M-Instruct.

Expected failures state a limit of the 135M model, never one of modelplug's: the same tests
run against the wire fakes and larger servers pass through the same code.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_modelplug import ChatModelPlug


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
        return {"model": "llamaserver:smollm2", "base_url": self._base_url}

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

    @property
    def supports_image_inputs(self) -> bool:
        return False
