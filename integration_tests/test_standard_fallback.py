"""langchain-tests' ChatModelIntegrationTests for a FallbackChatModel whose first candidate is
down (an OpenAI-compatible provider on a loopback port nobody listens on) and whose second is the
in-process SmolLM2 GGUF. Every call fails over; every xfail names a limit of the 135M model."""

from __future__ import annotations

from typing import Any

import pytest
from fakes.server import free_port
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from tiny_limits import IN_PROCESS_REFUSED, SCHEMA_TYPES

from langchain_modelplug import ChatModelPlug, FallbackChatModel
from modelplug import OutputTruncatedError


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

    # -- limits of SmolLM2-135M -----------------------------------------------------------------
    # FallbackChatModel.with_structured_output defaults to a forced tool call (the method every
    # tool-calling candidate shares), where ChatModelPlug defaults to json_schema: under the
    # tool call's grammar the 135M model loops inside the Joke's strings in every variant,
    # typeddict and pydantic v1 included (which pass for ChatModelPlug's json_schema default in
    # test_standard_llamacpp.py). The cut answer is an OutputTruncatedError naming max_tokens.

    _REPEATS = ("FallbackChatModel's default structured output is a forced tool call, and "
                "SmolLM2-135M repeats itself inside its arguments ('a cat is a cat, a cat is "
                "...') until max_tokens=100, so the object never closes: OutputTruncatedError")

    @pytest.mark.xfail(reason=_REPEATS, raises=OutputTruncatedError, strict=True)
    @pytest.mark.parametrize("schema_type", SCHEMA_TYPES)
    def test_structured_output(self, model: BaseChatModel, schema_type: str) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=_REPEATS, raises=OutputTruncatedError, strict=True)
    @pytest.mark.parametrize("schema_type", SCHEMA_TYPES)
    async def test_structured_output_async(self, model: BaseChatModel, schema_type: str) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=_REPEATS, raises=OutputTruncatedError, strict=True)
    def test_structured_output_pydantic_2_v1(self, model: BaseChatModel) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=_REPEATS, raises=OutputTruncatedError, strict=True)
    def test_structured_output_optional_param(self, model: BaseChatModel) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(reason="JSON mode constrains to a JSON object, not to the Joke's keys: the "
                       "135M model closes the object without a 'punchline', so the Joke does "
                       "not validate (as for ChatModelPlug in test_standard_llamacpp.py)",
                       raises=OutputParserException, strict=True)
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)
