"""LlamaIndex tool turns read the same way by ModelPlug and FallbackLLM (the shared helpers of
``llama_index.llms.modelplug._tools``): the turn's messages, the tool choice, the tool calls."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.tools import FunctionTool
from llama_index.llms.modelplug import FallbackLLM, ModelPlug

#: Nothing is sent: the SDK client is created on first use.
OPENAI = {"model": "openai:gpt-4o-mini", "api_key": "sk-test", "base_url": "http://127.0.0.1:9/v1"}


def magic_function(input: int) -> int:
    """A magic function."""
    return input + 2


@pytest.fixture(scope="module")
def llms() -> tuple[ModelPlug, FallbackLLM]:
    return ModelPlug(**OPENAI), FallbackLLM([ModelPlug(**OPENAI)])


def answer(*blocks: object) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, blocks=list(blocks)))


arguments = st.one_of(
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.text(max_size=20),  # partial or broken JSON as a stream leaves it
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3).map(
        lambda d: json.dumps(d)[:-1]))


@settings(deadline=None)  # a loaded machine is no failure
@given(st.lists(arguments, min_size=1, max_size=3))
def test_both_read_tool_calls_alike(llms: tuple[ModelPlug, FallbackLLM],
                                    args: list[object]) -> None:
    llm, fallback = llms
    response = answer(TextBlock(text="hi"), *(
        ToolCallBlock(tool_call_id=f"c{i}", tool_name="magic_function", tool_kwargs=a)
        for i, a in enumerate(args)))
    selections = llm.get_tool_calls_from_response(response)
    assert fallback.get_tool_calls_from_response(response) == selections
    assert [s.tool_id for s in selections] == [f"c{i}" for i in range(len(args))]
    assert all(isinstance(s.tool_kwargs, dict) for s in selections)


def test_both_refuse_an_answer_without_a_call_alike(
        llms: tuple[ModelPlug, FallbackLLM]) -> None:
    for model in llms:
        with pytest.raises(ValueError, match=r"text: 'Paris'\)\. Pass tool_required=True"):
            model.get_tool_calls_from_response(answer(TextBlock(text="Paris")))
        assert model.get_tool_calls_from_response(answer(TextBlock(text="Paris")),
                                                  error_on_no_tool_call=False) == []


def test_both_build_the_turn_alike_and_leave_the_history(
        llms: tuple[ModelPlug, FallbackLLM]) -> None:
    tool = FunctionTool.from_defaults(fn=magic_function)
    history = [ChatMessage(role=MessageRole.USER, content="earlier")]
    turns = [model._prepare_chat_with_tools([tool], user_msg="now?", chat_history=history,
                                            tool_required=True) for model in llms]
    assert turns[0]["messages"] == turns[1]["messages"]
    assert [m.content for m in turns[0]["messages"]] == ["earlier", "now?"]
    assert len(history) == 1
    assert turns[0]["tool_choice"] == "required"  # ModelPlug: tool_required without a choice


@pytest.mark.parametrize(("tool_kwargs", "needs_tools"), [
    ({}, True), ({"tool_required": True}, True), ({"tool_choice": "none"}, False),
    ({"tool_choice": False}, False), ({"tool_choice": {"type": "none"}}, False)])
def test_fallback_needs_read_the_tool_choice_as_the_request_does(
        tool_kwargs: dict[str, object], needs_tools: bool) -> None:
    tool = FunctionTool.from_defaults(fn=magic_function)
    needs = FallbackLLM._needs([ChatMessage(role=MessageRole.USER, content="x")], [tool],
                               tool_kwargs)
    assert needs is not None and needs.tools is needs_tools
