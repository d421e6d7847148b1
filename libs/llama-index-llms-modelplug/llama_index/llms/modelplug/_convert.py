"""The one conversion in each direction between LlamaIndex messages and modelplug's neutral types.

LlamaIndex -> modelplug: :func:`to_openai_messages` (ChatMessage blocks as OpenAI dicts).
modelplug -> LlamaIndex: :func:`to_chat_response` for whole answers, :func:`stream_steps` for
streams (every yielded ChatResponse carries the whole message so far, tool calls included).
"""

from __future__ import annotations

import base64
import json
import mimetypes
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    AudioBlock,
    CachePoint,
    ChatMessage,
    ChatResponse,
    CitableBlock,
    CitationBlock,
    CompletionResponse,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
    VideoBlock,
)

from modelplug.accounting import cost_of
from modelplug.backends.base import StreamCollector
from modelplug.types import THINKING_BLOCKS, ChatChunk, Message, ToolCall, Usage
from modelplug.types import ChatResponse as NeutralResponse

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


# -- LlamaIndex -> modelplug ------------------------------------------------------------------


def to_openai_messages(messages: Sequence[ChatMessage]) -> list[Message]:
    """LlamaIndex chat messages as OpenAI chat-completions dicts (new dicts; inputs untouched).

    Text blocks become the content (a string, or content parts when images are present); image
    blocks become ``image_url`` parts; tool-call blocks become the assistant's ``tool_calls``.
    Thinking blocks stay out (reasoning is the model's scratchpad, not conversation), except
    signed ones (an Anthropic answer's, signature in ``additional_information``): they go back
    as the message's ``thinking_blocks``, which the API needs before the tool calls they led to.
    """
    return [_message(m) for m in messages]


def _message(message: ChatMessage) -> Message:
    role = _ROLES.get(MessageRole(message.role))
    if role is None:
        raise ValueError(f"Unknown message role {message.role!r}; use one of "
                         f"{[r.value for r in _ROLES]}.")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in message.blocks:
        _block(block, parts, calls)
    has_images = any(p["type"] == "image_url" for p in parts)
    text = "".join(p["text"] for p in parts if p["type"] == "text")
    out: Message = {"role": role, "content": parts if has_images else text}
    if role == "assistant":
        calls = calls or _legacy_tool_calls(message.additional_kwargs.get("tool_calls"))
        if calls:
            out["tool_calls"] = calls
        signed = [s for s in map(_signed_block, message.blocks) if s is not None]
        if signed:
            out[THINKING_BLOCKS] = signed
    if role == "tool":
        if has_images:
            raise ValueError("A tool message cannot carry images through modelplug; return text "
                             "from the tool (or describe the image).")
        call_id = message.additional_kwargs.get("tool_call_id")
        if call_id is not None:
            out["tool_call_id"] = call_id
        if message.additional_kwargs.get("name"):
            out["name"] = message.additional_kwargs["name"]
    return out


def _block(block: Any, parts: list[dict[str, Any]], calls: list[dict[str, Any]]) -> None:
    if isinstance(block, TextBlock):
        _append_text(parts, block.text)
    elif isinstance(block, ImageBlock):
        parts.append({"type": "image_url", "image_url": _image_url(block)})
    elif isinstance(block, ToolCallBlock):
        kwargs = block.tool_kwargs
        calls.append({
            "id": block.tool_call_id or f"call_{len(calls)}",
            "type": "function",
            "function": {"name": block.tool_name,
                         "arguments": kwargs if isinstance(kwargs, str) else json.dumps(kwargs)},
        })
    elif isinstance(block, (ThinkingBlock, CachePoint)):
        return  # signed thinking: see _signed_block
    elif isinstance(block, CitableBlock):
        for inner in block.content:
            _block(inner, parts, calls)
    elif isinstance(block, CitationBlock):
        for inner in block.cited_content if isinstance(block.cited_content, list) \
                else [block.cited_content]:
            _block(inner, parts, calls)
    elif isinstance(block, (AudioBlock, VideoBlock, DocumentBlock)):
        raise ValueError(
            f"modelplug sends text and images to models; a {type(block).__name__} is not "
            "supported. Extract its text (e.g. with a LlamaIndex reader) and send a TextBlock."
        )
    else:
        raise ValueError(f"Unsupported content block {type(block).__name__}.")


def _append_text(parts: list[dict[str, Any]], text: str) -> None:
    # Adjacent text blocks join with a newline, as ChatMessage.content joins them.
    if parts and parts[-1]["type"] == "text":
        parts[-1] = {"type": "text", "text": f"{parts[-1]['text']}\n{text}"}
    else:
        parts.append({"type": "text", "text": text})


def _image_url(block: ImageBlock) -> dict[str, Any]:
    """An ImageBlock as an OpenAI ``image_url``: remote URLs pass through, never fetched here."""
    url: str
    if block.url is not None and block.image is None and block.path is None:
        url = str(block.url)
    else:
        data = block.resolve_image(as_base64=True).read().decode("ascii")
        mime = block.image_mimetype
        if mime is None and block.path is not None:
            mime = mimetypes.guess_type(str(block.path))[0]
        if mime is None:
            mime = _sniff_mime(base64.b64decode(data[:64] + "=" * (-len(data[:64]) % 4)))
        url = f"data:{mime};base64,{data}"
    out: dict[str, Any] = {"url": url}
    if block.detail:
        out["detail"] = block.detail
    return out


def _sniff_mime(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:3] == b"GIF":
        return "image/gif"
    return "image/png"


def _signed_block(block: Any) -> dict[str, Any] | None:
    """A signed ThinkingBlock as the provider's block (the inverse of :func:`thinking_block`)."""
    if not isinstance(block, ThinkingBlock):
        return None
    info = block.additional_information
    if info.get("redacted_data"):
        return {"type": "redacted_thinking", "data": info["redacted_data"]}
    if info.get("signature"):
        return {"type": "thinking", "thinking": block.content or "",
                "signature": info["signature"]}
    return None


def _legacy_tool_calls(calls: Any) -> list[dict[str, Any]]:
    """``additional_kwargs["tool_calls"]`` of older integrations: OpenAI dicts or SDK objects."""
    out = []
    for call in calls or []:
        if hasattr(call, "model_dump"):
            call = call.model_dump()
        if isinstance(call, dict) and call.get("function"):
            out.append({"id": call.get("id"), "type": "function",
                        "function": {"name": call["function"].get("name"),
                                     "arguments": call["function"].get("arguments") or "{}"}})
    return out


# -- modelplug -> LlamaIndex ------------------------------------------------------------------


def usage_kwargs(usage: Usage | None) -> dict[str, Any]:
    """Token usage under the OpenAI names LlamaIndex's token counting reads."""
    if usage is None:
        return {}
    out = {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
           "total_tokens": usage.total_tokens}
    if usage.cache_read_tokens:
        out["cached_tokens"] = usage.cache_read_tokens
    if usage.cache_creation_tokens:
        out["cache_creation_tokens"] = usage.cache_creation_tokens
    if usage.reasoning_tokens:
        out["reasoning_tokens"] = usage.reasoning_tokens
    if usage.audio_input_tokens:
        out["input_audio_tokens"] = usage.audio_input_tokens
    if usage.audio_output_tokens:
        out["output_audio_tokens"] = usage.audio_output_tokens
    return out


def _raw(model: str, finish_reason: str | None, usage: Usage | None,
         provider: str) -> dict[str, Any]:
    """A plain dict (serializable in workflow events); ``usage`` where token counting looks,
    ``cost`` (:meth:`modelplug.accounting.Cost.as_dict`) once the usage is known."""
    return {"model": model, "provider": provider, "finish_reason": finish_reason,
            "usage": usage_kwargs(usage) or None,
            "cost": None if usage is None else cost_of(usage, provider, model).as_dict()}


def tool_call_block(call: ToolCall) -> ToolCallBlock:
    # Arguments that did not parse stay the raw string, as streamed partial arguments do.
    return ToolCallBlock(tool_call_id=call.id, tool_name=call.name,
                         tool_kwargs=call.arguments if call.error is None else call.raw_arguments)


def thinking_block(signed: dict[str, Any]) -> ThinkingBlock:
    """A provider-signed block as a ThinkingBlock, its signature (or redacted data) kept in
    ``additional_information`` as llama-index-llms-anthropic keeps it."""
    if signed["type"] == "redacted_thinking":
        return ThinkingBlock(content=None, additional_information={"redacted_data": signed["data"]})
    return ThinkingBlock(content=signed["thinking"],
                         additional_information={"signature": signed["signature"]})


def _blocks(text: str, reasoning: str, signed: list[dict[str, Any]],
            calls: list[ToolCallBlock]) -> list[Any]:
    """Thinking (one block per signed block, then any reasoning they do not hold), text, calls."""
    blocks: list[Any] = [thinking_block(s) for s in signed]
    covered = "".join(s.get("thinking", "") for s in signed)
    rest = reasoning[len(covered):] if reasoning.startswith(covered) else reasoning
    if rest:  # unsigned reasoning, or a signed block's text still streaming
        blocks.append(ThinkingBlock(content=rest))
    blocks.append(TextBlock(text=text))
    return blocks + calls


def to_chat_response(response: NeutralResponse, provider: str) -> ChatResponse:
    """A whole neutral answer as a LlamaIndex ChatResponse."""
    message = ChatMessage(
        role=MessageRole.ASSISTANT,
        blocks=_blocks(response.text, response.reasoning, response.thinking_blocks,
                       [tool_call_block(c) for c in response.tool_calls]),
    )
    return ChatResponse(
        message=message,
        raw=_raw(response.model, response.finish_reason, response.usage, provider),
        additional_kwargs=usage_kwargs(response.usage),
    )


def to_completion_response(response: NeutralResponse, provider: str) -> CompletionResponse:
    return CompletionResponse(
        text=response.text,
        raw=_raw(response.model, response.finish_reason, response.usage, provider),
        additional_kwargs=usage_kwargs(response.usage),
    )


def stream_steps(chunks: Iterable[ChatChunk], provider: str,
                 single_tool_call: bool = False) -> Iterator[ChatResponse]:
    """A neutral stream as the cumulative ChatResponses LlamaIndex expects, one per chunk (see
    :func:`_step`); ``single_tool_call``: at most one tool call (parallel calls not allowed)."""
    collector = StreamCollector()
    for chunk in chunks:
        collector.add(chunk)
        yield _step(collector, chunk, provider, single_tool_call)


async def astream_steps(chunks: AsyncIterable[ChatChunk], provider: str,
                        single_tool_call: bool = False) -> AsyncIterator[ChatResponse]:
    collector = StreamCollector()
    async for chunk in chunks:
        collector.add(chunk)
        yield _step(collector, chunk, provider, single_tool_call)


def _step(collected: StreamCollector, chunk: ChatChunk, provider: str,
          single_tool_call: bool) -> ChatResponse:
    """The stream step for ``chunk``, once collected: the whole message so far (text, the
    reasoning as ThinkingBlocks: one per signed block once it has ended, the rest in one
    unsigned block; one ToolCallBlock per tool call, its partial JSON arguments a string until
    they parse), ``delta`` the new text and ``thinking_delta`` the new reasoning."""
    calls = [tool_call_block(c) for c in collected.tool_calls()] if collected.calls else []
    extra = usage_kwargs(chunk.usage)
    if chunk.reasoning:
        extra["thinking_delta"] = chunk.reasoning
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT,
                            blocks=_blocks(collected.text, collected.reasoning,
                                           collected.thinking_blocks,
                                           calls[:1] if single_tool_call else calls)),
        delta=chunk.text,
        raw=_raw(collected.model, collected.finish_reason, collected.usage, provider),
        additional_kwargs=extra,
    )


def completion_from_chat(response: ChatResponse, text: str | None = None) -> CompletionResponse:
    """A chat step as a completion step (``complete`` over a chat model)."""
    return CompletionResponse(
        text=(response.message.content or "") if text is None else text,
        delta=response.delta,
        raw=response.raw,
        additional_kwargs=dict(response.additional_kwargs),
    )
