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
from modelplug import OutputTruncatedError


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
        # cache_prompt=False: llama-server would otherwise reuse the KV of a prefix computed for
        # an earlier request (in another batch shape, so with slightly different logits), and the
        # greedy answer would depend on which tests ran before.
        return {"model": "llamaserver:smollm2", "base_url": self._base_url, "temperature": 0,
                "max_tokens": 100, "model_kwargs": {"cache_prompt": False}}

    @property
    def has_tool_calling(self) -> bool:
        # A limit of this model with this llama-server, not of the backend: llama-server
        # (llama.cpp vendored by llama-cpp-python 0.3.36) renders tools and builds its tool-call
        # grammar and parser only for chat templates that render tool calls. SmolLM2-135M's
        # renders none, so even a forced call (tool_choice="required", which is also how a named
        # choice is sent to llama-server) returns plain text; test_openai_compat.py keeps a strict
        # xfail that will show when that changes. The tool paths (request fields, streamed
        # deltas, parsing) are tested at the wire in test_openai_wire.py.
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

    # With cache_prompt=False (chat_model_params) every answer is recomputed from the prompt
    # alone, so the outcome no longer depends on which tests ran before: the structured-output
    # tests pass as real tests, and JSON mode fails the same way every time.
    @pytest.mark.xfail(reason="SmolLM2-135M in JSON mode (any JSON object, no schema to hold it "
                       "to) nests a 'punchline' object inside 'setup' and loops in it until "
                       "max_tokens, so the structured call raises OutputTruncatedError; "
                       "json_schema and json_mode requests themselves are tested in "
                       "test_openai_compat.py", raises=OutputTruncatedError, strict=True)
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)

    # llama-server's json_schema grammar leaves the string free, and the 135M model loops in
    # 'setup' until the budget; a cut structured answer is OutputTruncatedError, never the
    # partial Joke that used to make this pass.
    @pytest.mark.xfail(reason="SmolLM2-135M loops inside the Joke's 'setup' string until "
                       "max_tokens=100, so the structured call raises OutputTruncatedError",
                       raises=OutputTruncatedError, strict=True)
    def test_structured_output_optional_param(self, model: BaseChatModel) -> None:
        super().test_structured_output_optional_param(model)

    @property
    def supports_image_inputs(self) -> bool:
        return False
