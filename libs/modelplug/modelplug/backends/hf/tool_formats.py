"""Tool-call formats of chat templates (XML tags, a JSON object, a JSON array, a bracketed
list): detecting the one a template asks for, and parsing a model's raw answer into text and
tool calls.

Markup that does not parse as a call is left in the text, so nothing is silently lost.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from modelplug.backends import tooling
from modelplug.types import ToolCall

TOOL_CALL_FORMATS = ("XML", "JSON_OBJECT", "JSON_ARRAY", "BRACKETED")


def detect_tool_call_format(template: str | None) -> str | None:
    """The tool-call format a chat template asks for, or None when it knows no tools."""
    if not template or not tooling.template_knows_tools(template):
        return None
    if "<tool_call>" in template:
        return "XML"
    if "[TOOL_CALLS]" in template:
        return "BRACKETED"
    if "function name" in template and "parameters" in template:  # Llama 3.x wording
        return "JSON_OBJECT"
    return None


def parse_tool_calls(text: str, fmt: str | None) -> tuple[str, list[ToolCall]]:
    """Split a model's raw answer into (text, tool calls) for one of TOOL_CALL_FORMATS.

    Markup that does not parse as a call is left in the text, so nothing is silently lost.
    """
    if fmt == "XML":
        return _parse_xml(text)
    if fmt == "JSON_OBJECT":
        return _parse_json_values(text, prefixes=("<|python_tag|>",))
    if fmt == "JSON_ARRAY":
        return _parse_json_values(text, prefixes=("<|tool_call|>", "functools", "<tool_call>"))
    if fmt == "BRACKETED":
        return _parse_bracketed(text)
    return text, []


_XML_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.S)


def _call_from(obj: Any) -> ToolCall | None:
    """A call from ``{"name", "arguments" | "parameters"}`` (arguments as object or string)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if "function" in obj and isinstance(obj["function"], dict):  # OpenAI-shaped
        return _call_from(obj["function"])
    args = obj.get("arguments", obj.get("parameters", {}))
    call_id = obj.get("id") if isinstance(obj.get("id"), str) else None
    return ToolCall.parse(call_id or _new_call_id(), obj["name"], args)


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _parse_xml(text: str) -> tuple[str, list[ToolCall]]:
    calls, kept, pos = [], [], 0
    for match in _XML_CALL.finditer(text):
        call = _call_from(_json_or_none(match.group(1)))
        if call is None:
            continue
        calls.append(call)
        kept.append(text[pos:match.start()])
        pos = match.end()
    kept.append(text[pos:])
    return ("".join(kept).strip() if calls else text), calls


def _json_or_none(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


def _json_values(raw: str) -> list[Any] | None:
    """Consecutive JSON values separated by whitespace, ``;`` or ``,``; None if any fails."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(raw) and raw[pos] in " \t\r\n;,":
            pos += 1
        if pos == len(raw):
            return values
        try:
            value, pos = decoder.raw_decode(raw, pos)
        except json.JSONDecodeError:
            return None
        values.append(value)


def _parse_json_values(text: str, prefixes: tuple[str, ...]) -> tuple[str, list[ToolCall]]:
    """The whole answer is tool-call JSON (objects, or arrays of objects), after a marker."""
    body = text.strip()
    for prefix in prefixes:
        if body.startswith(prefix):
            body = body[len(prefix):].strip()
    body = body.removesuffix("<|/tool_call|>").strip()
    if not body.startswith(("{", "[")):
        return text, []
    values = _json_values(body)
    if not values:
        return text, []
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    calls = [_call_from(v) for v in flat]
    if not calls or any(c is None for c in calls):
        return text, []
    return "", calls  # type: ignore[return-value]


_BRACKETED_NAME = re.compile(r"\s*([\w.\-]+)\s*(?:\[CALL_ID\]\s*(\w+)\s*)?\[ARGS\]", re.S)


def _parse_bracketed(text: str) -> tuple[str, list[ToolCall]]:
    """Mistral's ``[TOOL_CALLS][{...}]`` (v3) and ``[TOOL_CALLS]name[ARGS]{...}`` (v11+)."""
    marker = "[TOOL_CALLS]"
    if marker not in text:
        return text, []
    head, *segments = text.split(marker)
    calls: list[ToolCall] = []
    for segment in segments:
        named = _BRACKETED_NAME.match(segment)
        if named:
            try:
                args, _ = json.JSONDecoder().raw_decode(segment, named.end())
            except json.JSONDecodeError:
                return text, []
            calls.append(ToolCall.parse(named.group(2) or _new_call_id(), named.group(1), args))
            continue
        values = _json_values(segment.strip())
        found = [_call_from(v) for value in values or []
                 for v in (value if isinstance(value, list) else [value])]
        if not found or any(c is None for c in found):
            return text, []
        calls.extend(found)  # type: ignore[arg-type]
    return head.strip(), calls


__all__ = ["TOOL_CALL_FORMATS", "detect_tool_call_format", "parse_tool_calls"]
