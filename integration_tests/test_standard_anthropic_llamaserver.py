"""LangChain's standard chat-model integration suite for ``anthropic:`` through the official
anthropic SDK against a real llama-server's Messages API (/v1/messages) running SmolLM2-135M.

Expected failures state a limit of the 135M model or of llama-server's Messages API, never one
of modelplug's: the Anthropic features llama-server lacks (thinking blocks, cache usage,
streamed tool_use) are tested at the wire in test_anthropic_fake.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_modelplug import ChatModelPlug


class TestAnthropicLlamaServerStandard(ChatModelIntegrationTests):
    _base_url: str = ""

    @pytest.fixture(autouse=True)
    def _server(self, llama_server: str) -> None:
        # The server's port is only known at run time; autouse fixtures run before `model`.
        type(self)._base_url = llama_server

    @property
    def chat_model_class(self) -> type[ChatModelPlug]:
        return ChatModelPlug

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # An ad-hoc id: the closed Anthropic catalog admits it because ;flags declare it (the
        # Messages API takes tools; this model cannot use them, see has_tool_calling).
        # max_tokens: test_stop_sequence builds the model from these params alone (see
        # test_standard_llamaserver.py).
        return {"model": "anthropic:smollm2;tools", "base_url": self._base_url, "api_key": "test",
                "temperature": 0, "max_tokens": 100}

    @property
    def has_tool_calling(self) -> bool:
        # SmolLM2-135M's chat template has no tool support, so llama-server neither renders
        # tools into the prompt nor constrains a call; tool_use requests and streamed tool_use
        # deltas are tested against the wire fake in test_anthropic_fake.py.
        return False

    @property
    def has_structured_output(self) -> bool:
        # Structured output on anthropic goes through a forced tool call (see above).
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True
