"""langchain-tests' ChatModelIntegrationTests for ChatModelPlug on SmolLM2 through transformers.

The model folder is the GGUF converted by the ``smollm2_hf_path`` fixture. Every xfail names a
limit of the 135M model, not of the adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hf_model import smollm2_hf_dir
from langchain_core.exceptions import OutputParserException
from langchain_tests.integration_tests import ChatModelIntegrationTests
from tiny_limits import IN_PROCESS_REFUSED, SCHEMA_TYPES

from langchain_modelplug import ChatModelPlug
from modelplug import OutputTruncatedError

_LOOPS = ("The 135M model loops inside the 'setup' string until max_tokens, so the structured "
          "call raises OutputTruncatedError (a partial Joke is never returned)")


@pytest.fixture(scope="module", autouse=True)
def converted_model(smollm2_hf_path: Path):
    """Convert the folder first; one torch thread (2 cores shared with other jobs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield smollm2_hf_path
    torch.set_num_threads(before)


class TestChatModelPlugHFIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatModelPlug]:
        return ChatModelPlug

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # max_tokens: without it a call may run to the end of the 8k context when the 135M
        # model repeats itself, which takes minutes on 2 shared CPU cores.
        return {"model": f"hf:{smollm2_hf_dir()}", "temperature": 0, "seed": 0,
                "max_tokens": 64}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = super().standard_chat_model_params
        return {k: v for k, v in params.items() if k not in IN_PROCESS_REFUSED}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def has_tool_calling(self) -> bool:
        return True

    # The 135M model repeats a phrase inside the JSON string until max_tokens cuts it, in every
    # Joke variant (greedy, compact JSON): the cut answer is an OutputTruncatedError. Structured
    # output on tasks the model can finish: test_structured_paths.py, test_hf_chat.py.

    @pytest.mark.xfail(reason=_LOOPS, raises=OutputTruncatedError, strict=True)
    @pytest.mark.parametrize("schema_type", SCHEMA_TYPES)
    def test_structured_output(self, model: Any, schema_type: str) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=_LOOPS, raises=OutputTruncatedError, strict=True)
    @pytest.mark.parametrize("schema_type", SCHEMA_TYPES)
    async def test_structured_output_async(self, model: Any, schema_type: str) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=_LOOPS, raises=OutputTruncatedError, strict=True)
    def test_structured_output_pydantic_2_v1(self, model: Any) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=_LOOPS + "; with punchline optional it used to pass on the partial "
                       "Joke the cut answer parsed into.", raises=OutputTruncatedError,
                       strict=True)
    def test_structured_output_optional_param(self, model: Any) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(reason="json_mode constrains to a JSON object, not to keys; the 135M "
                       "model writes a 'setup' and closes the object without a 'punchline'",
                       raises=OutputParserException, strict=True)
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)
