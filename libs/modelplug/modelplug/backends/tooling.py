"""Tool calling for in-process models by constrained decoding, and the per-call options they share.

A small local model does not call tools reliably on its own, so when tools are in play the answer
is constrained by a JSON schema (a llama.cpp grammar, or a transformers logits processor):

- ``tool_choice="required"`` or a tool name: the output must be ``{"name": ..., "arguments": ...}``
  for an allowed tool, its arguments valid against that tool's parameters;
- ``tool_choice="auto"`` (or None): the output is either such a call or ``{"response": "..."}``,
  a plain answer;
- ``tool_choice="none"``: no constraint and no tools in the prompt.

One call per turn (parallel calls are not offered by this path). For chat templates that know no
tools, the tools are described in a system message and earlier calls and results are written as
plain turns (:func:`template_messages`), so any chat model's template renders the conversation,
with or without tools bound.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from modelplug.errors import SettingError, closest_name
from modelplug.registry import STANDARD_PARAMS
from modelplug.types import (
    ChatRequest,
    CompletionRequest,
    Message,
    ToolCall,
    normalise_tool_choice,
)

RESPONSE_KEY = "response"
#: Per-call keys every in-process backend accepts besides its sampler's: it makes at most one
#: call per turn, which honours either value.
ACCEPTED_EVERYWHERE = frozenset({"parallel_tool_calls"})


def constrained(request: ChatRequest) -> bool:
    """Whether this request's tools take part (tools given and tool_choice is not "none")."""
    return bool(request.tools) and request.tool_choice != "none"


def _allowed_tools(request: ChatRequest) -> list[dict[str, Any]]:
    tools = [t["function"] for t in request.tools or []]
    choice = normalise_tool_choice(request.tool_choice, request.tools)
    if choice in (None, "auto", "required", "none"):
        return tools
    return [t for t in tools if t["name"] == choice]


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": parameters},
        "required": ["name", "arguments"],
    }


def output_schema(request: ChatRequest) -> dict[str, Any]:
    """The JSON schema the answer must follow when the request's tools take part.

    Each tool's parameters sit inside this wrapper, so their definitions (``$defs``, which
    their ``$ref``s point at from the document root) move to the wrapper's root; a name two
    tools define differently is renamed in the second one's references.
    """
    definitions: dict[str, Any] = {}
    options = []
    for function in _allowed_tools(request):
        option = _call_schema(function)
        parameters = option["properties"]["arguments"]
        for key in ("$defs", "definitions"):
            local = parameters.get(key) if isinstance(parameters, dict) else None
            if not isinstance(local, dict):
                continue
            parameters = {k: v for k, v in parameters.items() if k != key}
            text = json.dumps(parameters)
            for name, schema in local.items():
                moved = name if definitions.get(name, schema) == schema \
                    else f"{function['name']}.{name}"
                text = text.replace(json.dumps(f"#/{key}/{name}"), json.dumps(f"#/$defs/{moved}"))
                definitions[moved] = schema
            parameters = json.loads(text)
        option["properties"]["arguments"] = parameters
        options.append(option)
    if request.tool_choice in (None, "auto"):
        options.append({"type": "object", "properties": {RESPONSE_KEY: {"type": "string"}},
                        "required": [RESPONSE_KEY]})
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "$defs": definitions} if definitions else schema


def tools_prompt(request: ChatRequest) -> str:
    """A system-prompt section describing the tools and the expected JSON answer."""
    lines = ["You can call these tools:"]
    for function in _allowed_tools(request):
        params = json.dumps(function.get("parameters") or {}, separators=(",", ":"))
        lines.append(f"- {function['name']}: {function.get('description', '')} "
                     f"Parameters (JSON schema): {params}")
    lines.append('To call a tool, answer with JSON: {"name": <tool name>, "arguments": {...}}.')
    if request.tool_choice in (None, "auto"):
        lines.append(f'To answer without a tool, answer with JSON: {{"{RESPONSE_KEY}": "..."}}.')
    return "\n".join(lines)


def template_knows_tools(template: str | None) -> bool:
    """Whether a chat template renders tools, tool calls and tool results itself."""
    return "tools" in (template or "")


def template_messages(messages: list[Message], template: str | None,
                      tools_prompt: str | None = None) -> list[Message]:
    """The conversation as a chat template should receive it.

    A template that knows tools gets the messages as they are. Any other gets earlier tool calls
    and results as plain turns (:func:`plain_messages`, with ``tools_prompt`` in the system
    message), since it would render a call as an empty turn and a result in a role it does
    not know.
    """
    if template_knows_tools(template):
        return messages
    if tools_prompt is None and not any(m.get("tool_calls") or m.get("role") == "tool"
                                        for m in messages):
        return messages
    return plain_messages(messages, tools_prompt)


def plain_messages(messages: list[Message], extra_system: str | None = None) -> list[Message]:
    """The conversation as role/content turns any chat template renders.

    Earlier tool calls become the assistant's JSON; tool results become user turns naming the
    tool call they answer. ``extra_system`` is appended to (or becomes) the system message.
    """
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}
    out: list[Message] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = [{"name": c["function"]["name"],
                      "arguments": _loads(c["function"].get("arguments") or "{}")}
                     for c in message["tool_calls"]]
            content = "\n".join(filter(None, [text_content(content), *map(json.dumps, calls)]))
        elif role == "tool":
            name = names.get(message.get("tool_call_id"), "tool")
            role, content = "user", f"Result of {name}: {text_content(content)}"
        out.append({"role": role, "content": content})  # other turns keep their parts (images)
    return add_system(out, extra_system)


def add_system(messages: list[Message], text: str | None) -> list[Message]:
    """The conversation with ``text`` appended to (or becoming) its system message."""
    if not text:
        return messages
    out = list(messages)
    if out and out[0]["role"] == "system":
        system = text_content(out[0]["content"])
        out[0] = {**out[0], "content": f"{system}\n\n{text}"}
    else:
        out.insert(0, {"role": "system", "content": text})
    return out


def sampling_extras(request: ChatRequest | CompletionRequest, accepted: frozenset[str],
                    ref: object) -> dict[str, Any]:
    """The request's per-call extras that go to the sampler (``accepted``).

    Any other key is a TypeError: an in-process model has no server to pass it on to, so it
    would otherwise be dropped without a word.
    """
    unknown = sorted(set(request.extra) - accepted - ACCEPTED_EVERYWHERE)
    if unknown:
        known = accepted | ACCEPTED_EVERYWHERE
        suggestion = closest_name(unknown[0], {*STANDARD_PARAMS, *known})
        raise SettingError(
            f"'{ref}' got unknown keyword argument(s) {unknown}."
            + (f" Did you mean {suggestion!r}?" if suggestion else "")
            + f" Standard parameters: {list(STANDARD_PARAMS)}, tools, tool_choice and "
            f"response_format. It also accepts per call: {sorted(known)}. Load settings go to "
            "the constructor.", setting=unknown[0], suggestion=suggestion
        )
    return {k: v for k, v in request.extra.items() if k in accepted}


def text_content(content: Any) -> str:
    """String content from OpenAI content (a string or a list of parts)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def split_prefill(messages: list[Message]) -> tuple[list[Message], str]:
    """A conversation ending in an assistant message with text (and no tool calls) is a
    prefill: the answer continues that text, as Anthropic and llama-server read it (a fallback
    set resumes a cut stream so). Returns the messages before it and its text ("" and the
    messages unchanged when it does not end so)."""
    last = messages[-1] if messages else None
    if last is None or last.get("role") != "assistant" or last.get("tool_calls"):
        return messages, ""
    text = text_content(last.get("content"))
    return (messages[:-1], text) if isinstance(text, str) and text else (messages, "")


def _loads(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_output(text: str) -> tuple[str, list[ToolCall]]:
    """Split constrained output into (answer text, tool calls)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text, []  # cut short (max_tokens): the text as generated
    if isinstance(data, dict) and "name" in data and "arguments" in data:
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        return "", [ToolCall.parse(call_id, data["name"], data["arguments"])]
    if isinstance(data, dict) and isinstance(data.get(RESPONSE_KEY), str):
        return data[RESPONSE_KEY], []
    return text, []
