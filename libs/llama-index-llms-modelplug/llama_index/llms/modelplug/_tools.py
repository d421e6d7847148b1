"""Tool turns as LlamaIndex's FunctionCallingLLM shapes them, for ``ModelPlug`` and
``FallbackLLM`` alike: the turn's messages, the tools as OpenAI dicts with their tool choice,
and the tool calls read back from an answer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole, ToolCallBlock
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json

from modelplug.types import normalise_tool_choice


def tool_turn_messages(user_msg: str | ChatMessage | None,
                       chat_history: Sequence[ChatMessage] | None) -> list[ChatMessage]:
    """The messages of a turn with tools: a copy of ``chat_history`` (never appended to), then
    ``user_msg`` when given."""
    messages = list(chat_history or [])
    if isinstance(user_msg, str):
        user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
    if user_msg is not None:
        messages.append(user_msg)
    return messages


def openai_tool(tool: Any) -> dict[str, Any]:
    """A LlamaIndex tool (anything with ``.metadata``) or an OpenAI tool dict, as an OpenAI dict."""
    if isinstance(tool, dict):
        if tool.get("type") == "function" and "function" in tool:
            return tool
        raise ValueError(
            f"Tool dicts must be OpenAI tools ({{'type': 'function', 'function': {{...}}}}); "
            f"got keys {sorted(tool)}. Or pass a LlamaIndex tool (FunctionTool.from_defaults)."
        )
    metadata = getattr(tool, "metadata", None)
    if metadata is None or not hasattr(metadata, "to_openai_tool"):
        raise TypeError(
            f"Cannot use {tool!r} as a tool. Pass LlamaIndex tools (e.g. "
            "FunctionTool.from_defaults(fn=...)) or OpenAI tool dicts."
        )
    return metadata.to_openai_tool(skip_length_check=True)


def tools_and_choice(tools: Sequence[Any], tool_choice: Any,
                     tool_required: bool) -> tuple[list[dict[str, Any]], str | None]:
    """``tools`` as OpenAI dicts and the call's tool choice as the request takes it:
    ``tool_required`` without a choice of its own means some tool must be called."""
    specs = [openai_tool(t) for t in tools]
    if tool_choice is None and tool_required:
        tool_choice = "required"
    return specs, normalise_tool_choice(tool_choice, specs)


def tool_selections(response: ChatResponse, error_on_no_tool_call: bool) -> list[ToolSelection]:
    """The response's ToolCallBlocks as ToolSelections (partial JSON arguments parsed; arguments
    that are no JSON object become ``{}``)."""
    calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    if not calls:
        if error_on_no_tool_call:
            raise ValueError(
                "Expected at least one tool call, but the response has none "
                f"(text: {(response.message.content or '')[:200]!r}). Pass "
                "tool_required=True (or tool_choice='<tool name>') to force a call."
            )
        return []
    selections = []
    for call in calls:
        kwargs = call.tool_kwargs
        if isinstance(kwargs, str):
            try:
                kwargs = parse_partial_json(kwargs) if kwargs.strip() else {}
            except (ValueError, TypeError, json.JSONDecodeError):
                kwargs = {}
        selections.append(ToolSelection(tool_id=call.tool_call_id or "",
                                        tool_name=call.tool_name,
                                        tool_kwargs=kwargs if isinstance(kwargs, dict) else {}))
    return selections


def first_tool_call_only(response: ChatResponse) -> ChatResponse:
    """The response with at most one tool call (parallel tool calls not allowed)."""
    calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    if len(calls) <= 1:
        return response
    blocks = [b for b in response.message.blocks
              if not isinstance(b, ToolCallBlock) or b is calls[0]]
    message = response.message.model_copy(update={"blocks": blocks})
    return response.model_copy(update={"message": message})
