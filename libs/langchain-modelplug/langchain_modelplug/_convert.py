"""The one conversion in each direction between LangChain messages and modelplug's neutral types."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    convert_to_openai_messages,
)
from langchain_core.messages.ai import InputTokenDetails, OutputTokenDetails, UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk

from modelplug.accounting import cost_of
from modelplug.types import THINKING_BLOCKS, ChatChunk, ChatResponse, Message, Usage


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages (any content-block style) as OpenAI chat-completions dicts.

    Reasoning text stays out of later requests: it is the model's scratchpad, not conversation.
    Signed thinking blocks (``additional_kwargs["thinking_blocks"]``, as an Anthropic answer
    left them) go back with their assistant message: the API needs them before the tool calls
    they led to.
    """
    out: list[Message] = []
    for message in messages:
        # One at a time, so each AIMessage is matched with its own dict (a message may convert
        # to several, e.g. tool_result content blocks become tool messages).
        converted: list[Message] = convert_to_openai_messages([message])  # type: ignore[assignment]
        signed = message.additional_kwargs.get(THINKING_BLOCKS) \
            if isinstance(message, AIMessage) else None
        if signed:
            for item in converted:
                if item.get("role") == "assistant":
                    item[THINKING_BLOCKS] = list(signed)
        out.extend(converted)
    return out


def _extra(reasoning: str, signed: list[dict[str, Any]]) -> dict[str, Any]:
    """``additional_kwargs`` of an answer or chunk: reasoning text and signed thinking blocks."""
    extra: dict[str, Any] = {}
    if reasoning:
        extra["reasoning_content"] = reasoning
    if signed:
        extra[THINKING_BLOCKS] = list(signed)
    return extra


def usage_metadata(usage: Usage | None) -> UsageMetadata | None:
    if usage is None:
        return None
    meta = UsageMetadata(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                         total_tokens=usage.total_tokens)
    inp = InputTokenDetails()
    if usage.cache_read_tokens or usage.cache_creation_tokens:
        inp.update(cache_read=usage.cache_read_tokens, cache_creation=usage.cache_creation_tokens)
    if usage.audio_input_tokens:
        inp["audio"] = usage.audio_input_tokens
    if inp:
        meta["input_token_details"] = inp
    out = OutputTokenDetails()
    if usage.reasoning_tokens:
        out["reasoning"] = usage.reasoning_tokens
    if usage.audio_output_tokens:
        out["audio"] = usage.audio_output_tokens
    if out:
        meta["output_token_details"] = out
    return meta


def llm_output(response: ChatResponse) -> dict[str, Any]:
    """``ChatResult.llm_output`` as LangChain partner models fill it: the model that answered
    and the provider's answer id (tracing instrumentations read them there)."""
    out: dict[str, Any] = {"model_name": response.model}
    if response.id:
        out["id"] = response.id
    return out


def _response_metadata(model: str, finish_reason: str | None, provider: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"model_name": model, "model_provider": provider}
    if finish_reason is not None:
        meta["finish_reason"] = finish_reason
    return meta


def _cost(usage: Usage | None, provider: str, model: str) -> dict[str, Any]:
    """``{"cost": {...}}`` for the message or chunk that carries the usage, else nothing."""
    return {} if usage is None else {"cost": cost_of(usage, provider, model).as_dict()}


# The two builders below pass a message only the fields that are set: each keyword given costs
# pydantic validation (a few microseconds), and a stream builds one chunk per token. The others
# keep the message's defaults, which are the same empty values.


def to_ai_message(response: ChatResponse, provider: str) -> AIMessage:
    fields: dict[str, Any] = {}
    if response.tool_calls:
        fields["tool_calls"] = [tool_call(name=c.name, args=c.arguments, id=c.id)
                                for c in response.tool_calls if c.error is None]
        fields["invalid_tool_calls"] = [
            invalid_tool_call(name=c.name, args=c.raw_arguments, id=c.id, error=c.error)
            for c in response.tool_calls if c.error is not None]
    if response.reasoning or response.thinking_blocks:
        fields["additional_kwargs"] = _extra(response.reasoning, response.thinking_blocks)
    if response.usage is not None:
        fields["usage_metadata"] = usage_metadata(response.usage)
    return AIMessage(
        content=response.text,
        response_metadata={**_response_metadata(response.model, response.finish_reason, provider),
                           **_cost(response.usage, provider, response.model)},
        **fields,
    )


def to_ai_chunk(chunk: ChatChunk, provider: str) -> AIMessageChunk:
    fields: dict[str, Any] = {}
    if chunk.tool_calls:
        fields["tool_call_chunks"] = [
            tool_call_chunk(name=d.name, args=d.arguments or None, id=d.id, index=d.index)
            for d in chunk.tool_calls]
    if chunk.reasoning or chunk.thinking_blocks:
        fields["additional_kwargs"] = _extra(chunk.reasoning, chunk.thinking_blocks)
    if chunk.usage is not None:
        fields["usage_metadata"] = usage_metadata(chunk.usage)
        fields["response_metadata"] = _cost(chunk.usage, provider, chunk.model)
    if chunk.finish_reason is not None:
        fields["response_metadata"] = {
            **_response_metadata(chunk.model, chunk.finish_reason, provider),
            **fields.get("response_metadata", {})}
        fields["chunk_position"] = "last"
    return AIMessageChunk(content=chunk.text, **fields)
