"""collect_stream collects a neutral stream into the response invoke would give: text and reasoning
joined, tool-call fragments assembled per index, signed thinking blocks kept in order, the last
usage and finish reason."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from llama_index.llms.modelplug._convert import stream_steps, to_chat_response

from modelplug.backends.base import StreamCollector, collect_stream
from modelplug.types import ChatChunk, ToolCallDelta, Usage

SIGNED = {"type": "thinking", "thinking": "Add two.", "signature": "sig-1"}
REDACTED = {"type": "redacted_thinking", "data": "opaque"}


def test_a_stream_is_collected_into_one_response() -> None:
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


deltas = st.builds(ToolCallDelta, index=st.integers(0, 2), id=st.sampled_from([None, "c"]),
                   name=st.sampled_from([None, "f"]),
                   arguments=st.sampled_from(["", "{", '"a"', ": 1", "}", "[1]"]))
chunks = st.lists(st.builds(
    ChatChunk, text=st.text(max_size=3), reasoning=st.sampled_from(["", "hm "]),
    tool_calls=st.lists(deltas, max_size=2),
    thinking_blocks=st.sampled_from([[], [SIGNED], [REDACTED]]),
    usage=st.sampled_from([None, Usage(3, 4)]),
    finish_reason=st.sampled_from([None, "stop", "tool_calls"]),
    model=st.sampled_from(["", "m"]), id=st.sampled_from(["", "x"])), max_size=6)


@settings(deadline=None)  # a loaded machine is no failure
@given(chunks)
def test_the_answer_so_far_is_the_collected_prefix(stream: list[ChatChunk]) -> None:
    """StreamCollector read after each chunk is the stream so far collected whole."""
    collector = StreamCollector()
    for i, chunk in enumerate(stream, 1):
        collector.add(chunk)
        assert collector.response() == collect_stream(stream[:i])


@settings(deadline=None)  # a loaded machine is no failure
@given(chunks.filter(bool))
def test_a_llama_index_stream_ends_on_the_whole_answer(stream: list[ChatChunk]) -> None:
    """The last step of a LlamaIndex stream carries the message and raw of the answer the
    same chunks make when collected and converted whole."""
    *_, last = stream_steps(stream, "p")
    whole = to_chat_response(collect_stream(stream), "p")
    assert last.message == whole.message and last.raw == whole.raw
