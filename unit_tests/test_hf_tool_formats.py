"""The hf backend's tool-call parsers (XML, JSON object, JSON array, bracketed) and format
detection, and the earlier tool turns both in-process backends hand their chat templates,
offline."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelplug.backends import tooling
from modelplug.backends.hf import detect_tool_call_format, parse_tool_calls


def _calls(text: str, fmt: str) -> tuple[str, list[tuple[str, dict]]]:
    rest, calls = parse_tool_calls(text, fmt)
    assert all(c.error is None for c in calls)
    assert all(c.id.startswith("call_") or c.id for c in calls)
    return rest, [(c.name, c.arguments) for c in calls]


# -- XML (Qwen, Hermes) --------------------------------------------------------------------


def test_xml_single_call() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert _calls(text, "XML") == ("", [("get_weather", {"city": "Paris"})])


def test_xml_text_before_and_several_calls() -> None:
    text = ('Let me check.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
            '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>')
    assert _calls(text, "XML") == ("Let me check.", [("a", {"x": 1}), ("b", {})])


def test_xml_unclosed_last_call_is_still_read() -> None:
    text = '<tool_call>{"name": "a", "arguments": {"x": 2}}'
    assert _calls(text, "XML") == ("", [("a", {"x": 2})])


def test_xml_malformed_call_stays_text() -> None:
    text = "<tool_call>{not json}</tool_call>"
    assert _calls(text, "XML") == (text, [])


def test_xml_arguments_as_a_json_string() -> None:
    text = '<tool_call>{"name": "a", "arguments": "{\\"x\\": 3}"}</tool_call>'
    assert _calls(text, "XML") == ("", [("a", {"x": 3})])


# -- JSON_OBJECT (Llama 3.x) -------------------------------------------------------------


def test_json_object_with_parameters_key() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert _calls(text, "JSON_OBJECT") == ("", [("get_weather", {"city": "Paris"})])


def test_json_object_python_tag_and_several_calls() -> None:
    text = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}'
    assert _calls(text, "JSON_OBJECT") == ("", [("a", {"x": 1}), ("b", {})])


def test_json_object_plain_answer_is_text() -> None:
    assert _calls("The answer is 4.", "JSON_OBJECT") == ("The answer is 4.", [])
    assert _calls('{"city": "Paris"}', "JSON_OBJECT") == ('{"city": "Paris"}', [])


# -- JSON_ARRAY --------------------------------------------------------------------------------


def test_json_array_of_calls() -> None:
    text = '[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": "z"}}]'
    assert _calls(text, "JSON_ARRAY") == ("", [("a", {"x": 1}), ("b", {"y": "z"})])


def test_json_array_after_a_marker() -> None:
    text = '<|tool_call|>[{"name": "a", "arguments": {"x": 1}}]<|/tool_call|>'
    assert _calls(text, "JSON_ARRAY") == ("", [("a", {"x": 1})])


def test_json_array_that_is_not_calls_is_text() -> None:
    assert _calls("[1, 2, 3]", "JSON_ARRAY") == ("[1, 2, 3]", [])


# -- BRACKETED (Mistral) -----------------------------------------------------------------------


def test_bracketed_v3_json_list() -> None:
    text = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123XYZ"}]'
    rest, calls = parse_tool_calls(text, "BRACKETED")
    assert rest == "" and calls[0].name == "get_weather" and calls[0].id == "abc123XYZ"
    assert calls[0].arguments == {"city": "Paris"}


def test_bracketed_v11_name_args_and_text_before() -> None:
    text = 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]now[ARGS]{}'
    assert _calls(text, "BRACKETED") == ("Sure.", [("get_weather", {"city": "Paris"}),
                                                   ("now", {})])


def test_bracketed_with_call_id() -> None:
    text = '[TOOL_CALLS]f[CALL_ID]a1b2c3d4e[ARGS]{"x": 1}'
    rest, calls = parse_tool_calls(text, "BRACKETED")
    assert (rest, calls[0].id, calls[0].arguments) == ("", "a1b2c3d4e", {"x": 1})


def test_bracketed_without_marker_is_text() -> None:
    assert _calls("no calls here", "BRACKETED") == ("no calls here", [])


def test_unknown_format_leaves_text() -> None:
    assert parse_tool_calls('<tool_call>{"name": "a"}</tool_call>', None)[1] == []


# -- detection from chat templates -------------------------------------------------------------


@pytest.mark.parametrize(("template", "expected"), [
    ("{% if tools %}<tools>{{ tools }}</tools> ... <tool_call>{% endif %}", "XML"),
    ("{% if tools %}[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]",
     "BRACKETED"),
    ('{% if tools %}Respond in the format {"name": function name, "parameters": dictionary of '
     'argument name and its value}{% endif %}', "JSON_OBJECT"),
    ("{% for message in messages %}{{ message.content }}{% endfor %}", None),
    (None, None),
])
def test_detect_tool_call_format(template: str | None, expected: str | None) -> None:
    assert detect_tool_call_format(template) == expected


def test_importing_the_backend_imports_no_torch() -> None:
    code = ("import sys, modelplug.backends.hf, langchain_modelplug; "
            "print('torch' in sys.modules, 'transformers' in sys.modules, "
            "'llguidance' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


# -- earlier tool turns for the chat template -----------------------------------------------

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "What is this? "}, IMAGE]},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "magic_function", "arguments": '{"input": 3}'}}]},
    {"role": "tool", "content": "5", "tool_call_id": "call_1"},
]


def test_a_template_without_tools_gets_calls_and_results_as_plain_turns() -> None:
    out = tooling.template_messages(HISTORY, "{{ messages }}")
    assert out[2] == {"role": "assistant",
                      "content": '{"name": "magic_function", "arguments": {"input": 3}}'}
    assert out[3] == {"role": "user", "content": "Result of magic_function: 5"}
    assert out[1]["content"][1] == IMAGE  # other turns keep their parts
    described = tooling.template_messages(HISTORY, None, "You can call these tools: ...")
    assert described[0] == {"role": "system",
                            "content": "Be brief.\n\nYou can call these tools: ..."}


def test_a_template_with_tools_renders_them_itself() -> None:
    template = "{% if tools %}{{ tools }}{% endif %}{{ messages }}"
    assert tooling.template_messages(HISTORY, template) is HISTORY
    plain = [{"role": "user", "content": [IMAGE]}]
    assert tooling.template_messages(plain, None) is plain  # no tool turns: nothing to rewrite
