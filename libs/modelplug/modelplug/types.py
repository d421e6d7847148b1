"""Neutral request, response and chunk types, in OpenAI chat-completions shapes.

Adapters convert framework messages into a :class:`ChatRequest` once, and a
:class:`ChatResponse` / :class:`ChatChunk` back once; backends see nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from modelplug.errors import ConfigurationError

#: OpenAI-format messages: {"role": ..., "content": str | [content parts], "tool_calls": [...],
#: "tool_call_id": ...}. Image parts are {"type": "image_url", "image_url": {"url": ...}}.
#: An assistant message may also carry :data:`THINKING_BLOCKS`.
Message = dict[str, Any]

#: The assistant-message key (and response / chunk field) of provider-signed reasoning blocks:
#: Anthropic's ``{"type": "thinking", "thinking": ..., "signature": ...}`` and
#: ``{"type": "redacted_thinking", "data": ...}``, in the provider's own shape. They go back
#: verbatim, before the tool calls they led to, to the provider that signed them; every other
#: backend leaves them out of its requests, as it leaves out reasoning text.
THINKING_BLOCKS = "thinking_blocks"
ToolChoice = Literal["auto", "none", "required"] | str | None


#: The choices that name no tool, as :class:`ChatRequest` spells them.
TOOL_CHOICE_MODES = ("auto", "none", "required")


def tool_name(tool: dict[str, Any]) -> Any:
    """A tool's name, OpenAI-shaped (``{"function": {"name": ...}}``) or Anthropic-shaped
    (``{"name": ...}``)."""
    function = tool.get("function")
    return (function if isinstance(function, dict) else tool).get("name")


def normalise_tool_choice(choice: Any, tools: Sequence[dict[str, Any]] | None) -> str | None:
    """Any spelling of ``tool_choice`` as :class:`ChatRequest` takes it: None (unset), "auto",
    "none", "required" (some tool must be called), or the name of the one tool to call, which
    must be one of ``tools``.

    The one place every adapter and backend reads a tool choice. Spellings taken besides those:
    "any" and True (LangChain's and Anthropic's "required"), False ("none"), OpenAI's
    ``{"type": "function", "function": {"name": ...}}``, Anthropic's
    ``{"type": "tool", "name": ...}`` and ``{"type": "auto" | "any" | "none"}``.
    """
    if choice is None:
        return None
    if isinstance(choice, bool):
        return "required" if choice else "none"
    if isinstance(choice, dict):
        function = choice.get("function")
        choice = (function.get("name") if isinstance(function, dict) else None) \
            or choice.get("name") or choice.get("type")
    if choice in TOOL_CHOICE_MODES:
        return choice
    if choice == "any":
        return "required"
    names = [tool_name(t) for t in tools or []]
    if choice not in names:
        raise ConfigurationError(
            f"tool_choice {choice!r} names no tool given. Tools: {names}; name one of them, or "
            "use 'auto', 'none' or 'required'.")
    return choice


@dataclass
class CompletionRequest:
    """Raw text completion: the prompt is sent as-is, no chat template."""

    prompt: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChatRequest:
    messages: list[Message]
    #: OpenAI tool definitions: {"type": "function", "function": {name, description, parameters}}.
    tools: list[dict[str, Any]] | None = None
    #: "auto", "none", "required" (any tool), or a tool name to force.
    tool_choice: ToolChoice = None
    #: False: at most one tool call per answer. Sent where the API has the switch (OpenAI's
    #: ``parallel_tool_calls``, Anthropic's ``disable_parallel_tool_use``); in-process models make
    #: one call per turn anyway; None: the provider's default.
    parallel_tool_calls: bool | None = None
    #: {"type": "json_object"} or {"type": "json_schema", "json_schema": {name, schema, strict}}.
    response_format: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    #: True/False switches reasoning on/off where the model supports the switch; None: default.
    reasoning: bool | None = None
    #: Provider-specific request fields, passed through untouched.
    extra: dict[str, Any] = field(default_factory=dict)
    #: HTTP headers for this request (e.g. a pool's ``x-session-id``); HTTP backends send them,
    #: in-process ones have no use for them.
    headers: dict[str, str] | None = None

    @property
    def has_images(self) -> bool:
        return any(
            isinstance(m.get("content"), list)
            and any(p.get("type") == "image_url" for p in m["content"] if isinstance(p, dict))
            for m in self.messages
        )

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must follow, if the response format names one."""
        rf = self.response_format or {}
        if rf.get("type") == "json_schema":
            return rf.get("json_schema", {}).get("schema")
        return None


#: The sampling fields of both requests, which an adapter object also holds for every call.
SAMPLING_FIELDS = ("temperature", "max_tokens", "top_p", "stop", "seed")
#: The :class:`ChatRequest` fields a framework call may set by keyword argument.
REQUEST_FIELDS = frozenset({*SAMPLING_FIELDS, "reasoning", "tools", "tool_choice",
                            "parallel_tool_calls", "response_format", "headers"})


def request_fields(model: Any, kwargs: dict[str, Any], *, completion: bool = False,
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request fields of one call through an adapter, and the rest: the one way both
    adapters (LangChain's and LlamaIndex's) build a :class:`ChatRequest` (or, ``completion``,
    a :class:`CompletionRequest`).

    The fields are ``model``'s own settings (its attributes named in :data:`SAMPLING_FIELDS`,
    and ``reasoning`` for chat) that are set (not None), overridden by the call's keyword
    arguments naming a field of the request; every other keyword argument is returned apart,
    for the request's ``extra`` (provider fields). ``kwargs`` is left as it was.
    """
    own = SAMPLING_FIELDS if completion else (*SAMPLING_FIELDS, "reasoning")
    per_call = SAMPLING_FIELDS if completion else REQUEST_FIELDS
    fields = {}
    for name in own:
        value = getattr(model, name)
        if value is not None:
            fields[name] = value
    extra = {}
    for key, value in kwargs.items():
        if key in per_call:
            fields[key] = value
        else:
            extra[key] = value
    return fields, extra


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]
    #: The arguments exactly as the model wrote them; ``error`` is set when they did not parse.
    raw_arguments: str = ""
    error: str | None = None

    @classmethod
    def parse(cls, id: str, name: str, raw_arguments: str | dict[str, Any] | None) -> ToolCall:
        if isinstance(raw_arguments, dict):
            return cls(id, name, raw_arguments, json.dumps(raw_arguments))
        raw = raw_arguments or ""
        try:
            args = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            return cls(id, name, {}, raw, error=f"arguments are not valid JSON: {exc}")
        if not isinstance(args, dict):
            return cls(id, name, {}, raw, error="arguments are not a JSON object")
        return cls(id, name, args, raw)


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    #: Audio tokens, where the provider counts them apart (OpenAI's ``prompt_tokens_details``
    #: / ``completion_tokens_details.audio_tokens``); included in input/output_tokens.
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class ChatResponse:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning: str = ""
    #: Signed reasoning blocks to send back with this turn (see :data:`THINKING_BLOCKS`).
    thinking_blocks: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage | None = None
    #: "stop", "length", "tool_calls" or "content_filter", as in OpenAI's API.
    finish_reason: str | None = None
    model: str = ""
    #: The provider's id of this answer (``chatcmpl-...``, ``msg_...``), "" when it gives none.
    id: str = ""


@dataclass
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    #: A fragment of the JSON arguments string.
    arguments: str = ""


@dataclass
class ChatChunk:
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    #: Signed reasoning blocks, each whole, on the chunk where it ends (its text came before as
    #: ``reasoning`` deltas).
    thinking_blocks: list[dict[str, Any]] = field(default_factory=list)
    #: Set on the last chunk of a stream.
    usage: Usage | None = None
    finish_reason: str | None = None
    model: str = ""
    #: The provider's id of the answer, on the last chunk where it gives one.
    id: str = ""
