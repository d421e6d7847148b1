"""langchain-tests' ChatModelIntegrationTests for ChatModelPlug on the in-process SmolLM2 GGUF.

Every xfail names a limit of the 135M model, not of the adapter."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from tiny_limits import IN_PROCESS_REFUSED, overridden, schema_types

from langchain_modelplug import ChatModelPlug
from modelplug import OutputTruncatedError

TINY_JOKE = ("SmolLM2-135M cannot write the suite's Joke: under the JSON-schema grammar it loops "
             "inside the 'setup' string ('I'm a cat, I'm a cat, ...') until max_tokens, so the "
             "JSON never closes and the structured call raises OutputTruncatedError (a partial "
             "Joke is never returned). Grammar-constrained output that the model can finish is "
             "tested in test_structured_paths.py and test_structured_conformance.py.")


# The pydantic and json_schema Jokes loop (greedy, compact JSON); the typeddict one finishes,
# and must.
JOKE_SCHEMA_TYPES = schema_types(("pydantic", "json_schema"), TINY_JOKE, OutputTruncatedError)


class TestChatModelPlugLlamaCppIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatModelPlug]:
        return ChatModelPlug

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # The integration suite sets no max_tokens; bound generation so a looping 135M model
        # cannot run to the end of its 8k context.
        return {"model": "llamacpp:smollm2", "temperature": 0, "seed": 0, "max_tokens": 100}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = super().standard_chat_model_params
        return {k: v for k, v in params.items() if k not in IN_PROCESS_REFUSED}

    # Overrides keep the base signatures (and parametrizations): pytest fills fixtures by name.
    @overridden(TINY_JOKE + " (pydantic and json_schema; typeddict must pass)")
    @pytest.mark.parametrize("schema_type", JOKE_SCHEMA_TYPES)
    def test_structured_output(self, model: BaseChatModel, schema_type: str) -> None:
        super().test_structured_output(model, schema_type)

    @overridden(TINY_JOKE + " (pydantic and json_schema; typeddict must pass)")
    @pytest.mark.parametrize("schema_type", JOKE_SCHEMA_TYPES)
    async def test_structured_output_async(self, model: BaseChatModel, schema_type: str) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=TINY_JOKE + " With punchline optional, it used to pass on the "
                       "partial Joke the cut answer parsed into.", raises=OutputTruncatedError,
                       strict=True)
    def test_structured_output_optional_param(self, model: BaseChatModel) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(reason="JSON mode constrains to a JSON object, not to the Joke's keys: the "
                       "135M model closes the object without a 'punchline', so the Joke does "
                       "not validate.", raises=OutputParserException, strict=True)
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def has_tool_calling(self) -> bool:
        return True
