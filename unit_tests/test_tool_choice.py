"""normalise_tool_choice: the one reading of tool_choice that both adapters and every backend use."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelplug import ConfigurationError
from modelplug.backends.anthropic import convert_tool_choice
from modelplug.types import TOOL_CHOICE_MODES, normalise_tool_choice

names = st.text(st.characters(categories=["L", "N"], include_characters="_-"), min_size=1,
                max_size=12).filter(lambda n: n not in (*TOOL_CHOICE_MODES, "any"))
tool_names = st.lists(names, min_size=1, max_size=5, unique=True)


def openai_tools(tool_names: list[str]) -> list[dict]:
    return [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
            for n in tool_names]


@given(tool_names, st.data())
def test_every_spelling_of_a_name_is_that_name(tools: list[str], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(tools))
    spellings = [name, {"type": "function", "function": {"name": name}},
                 {"type": "tool", "name": name}, {"name": name}]
    for spelling in spellings:
        assert normalise_tool_choice(spelling, openai_tools(tools)) == name
        # Anthropic-shaped tools ({"name": ...}) are read the same way
        assert normalise_tool_choice(spelling, [{"name": n} for n in tools]) == name


@given(st.lists(names, max_size=5, unique=True))
def test_modes_whatever_the_tools(tools: list[str]) -> None:
    table = {None: None, True: "required", False: "none", "any": "required",
             "required": "required", "auto": "auto", "none": "none"}
    for choice, expected in table.items():
        assert normalise_tool_choice(choice, openai_tools(tools)) == expected
    for mode in ("auto", "any", "none"):  # Anthropic's object spelling
        assert normalise_tool_choice({"type": mode}, openai_tools(tools)) == table[mode]


@given(tool_names, names)
def test_a_name_of_no_tool_is_refused_with_the_names(tools: list[str], other: str) -> None:
    if other in tools:
        return
    with pytest.raises(ConfigurationError) as info:
        normalise_tool_choice(other, openai_tools(tools))
    assert isinstance(info.value, ValueError)  # what LangChain and LlamaIndex callers catch
    assert repr(other) in str(info.value) and repr(tools) in str(info.value)
    assert "'auto', 'none' or 'required'" in str(info.value)


def test_anthropic_wire_form_follows_the_normalised_choice() -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    assert convert_tool_choice(True, tools) == {"type": "any"}
    assert convert_tool_choice({"type": "function", "function": {"name": "f"}}, tools) == \
        {"type": "tool", "name": "f"}
    assert convert_tool_choice("none", tools) == {"type": "none"}
