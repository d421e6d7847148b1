"""langchain-tests' ChatModelIntegrationTests for a FallbackChatModel whose first candidate is
down (an OpenAI-compatible provider on a loopback port nobody listens on) and whose second is the
in-process SmolLM2 GGUF. Every call fails over; every xfail names a limit of the 135M model."""

from __future__ import annotations

from typing import Any

import pytest
from fakes.server import free_port
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_modelplug import ChatModelPlug, FallbackChatModel

IN_PROCESS_REFUSED = ("timeout", "max_retries", "api_key")


class TestFallbackChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[FallbackChatModel]:
        return FallbackChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        down = ChatModelPlug(model="vllm:x", base_url=f"http://127.0.0.1:{free_port()}/v1",
                             max_retries=0)
        # max_tokens here too: test_stop_sequence builds the model from these params alone.
        return {"models": [down, "llamacpp:smollm2"], "temperature": 0, "seed": 0,
                "max_tokens": 100}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # Applied to the string candidate (llamacpp), which refuses client settings.
        # max_tokens 100 (the suite sets none): room for the Japanese unicode tool call, and a
        # bound on the 135M model's loops.
        params = {**super().standard_chat_model_params, "max_tokens": 100}
        return {k: v for k, v in params.items() if k not in IN_PROCESS_REFUSED}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    # -- limits of SmolLM2-135M (ChatModelPlug on the same model does the same) ---------------

    _REPEATS = ("SmolLM2-135M repeats itself inside the JSON it is constrained to ('a cat is a cat, "
                "a cat is ...') until max_tokens, so the object never closes")

    @pytest.mark.xfail(reason=_REPEATS, strict=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model: BaseChatModel, schema_type: str) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=_REPEATS, strict=False)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model: BaseChatModel, schema_type: str) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=_REPEATS, strict=False)
    def test_structured_output_pydantic_2_v1(self, model: BaseChatModel) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=_REPEATS, strict=False)
    def test_structured_output_optional_param(self, model: BaseChatModel) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(reason=_REPEATS, strict=False)
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(reason="with tool_choice unforced, SmolLM2-135M answers the weather "
                       "question in text instead of calling get_weather (forced, it calls it: "
                       "test_fallback.py::test_create_agent_with_tools)", strict=False)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)
