"""collect_stream folds a neutral stream into the response invoke would give: text and reasoning
joined, tool-call fragments assembled per index, signed thinking blocks kept in order, the last
usage and finish reason."""

from __future__ import annotations

from modelplug.backends.base import collect_stream
from modelplug.types import ChatChunk, ToolCallDelta, Usage

SIGNED = {"type": "thinking", "thinking": "Add two.", "signature": "sig-1"}
REDACTED = {"type": "redacted_thinking", "data": "opaque"}


def test_a_stream_folds_into_one_response() -> None:
    response = collect_stream(iter([
        ChatChunk(reasoning="Add "),
        ChatChunk(reasoning="two.", thinking_blocks=[SIGNED]),
        ChatChunk(thinking_blocks=[REDACTED]),
        ChatChunk(text="Calling ", tool_calls=[ToolCallDelta(0, "toolu_a", "magic", '{"in')]),
        ChatChunk(text="it.", tool_calls=[ToolCallDelta(0, arguments='put": 3}'),
                                          ToolCallDelta(1, None, "other", "{}")]),
        ChatChunk(usage=Usage(10, 5), finish_reason="tool_calls", model="m"),
    ]))
    assert response.text == "Calling it." and response.reasoning == "Add two."
    assert response.thinking_blocks == [SIGNED, REDACTED]
    first, second = response.tool_calls
    assert (first.id, first.name, first.arguments) == ("toolu_a", "magic", {"input": 3})
    assert (second.id, second.name, second.arguments) == ("call_1", "other", {})  # id made up
    assert response.usage == Usage(10, 5) and response.finish_reason == "tool_calls"
    assert response.model == "m"
