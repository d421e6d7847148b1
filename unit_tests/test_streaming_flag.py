"""ChatModelPlug(streaming=True) where LangChain leaves the call to ``_generate`` (streaming
disabled for the call): the stream is collected by LangChain's own generate_from_stream, as
ChatOpenAI does, into the message a whole answer gives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from langchain_modelplug import ChatModelPlug
from modelplug.types import ChatChunk, ToolCallDelta, Usage

OPENAI = {"model": "openai:gpt-4o-mini", "api_key": "sk-test", "base_url": "http://127.0.0.1:9/v1"}
CHUNKS = [
    ChatChunk(text="Calling ", tool_calls=[ToolCallDelta(0, "c1", "magic", '{"input"')]),
    ChatChunk(text="it.", tool_calls=[ToolCallDelta(0, arguments=": 3}"),
                                      ToolCallDelta(1, "c2", "broken", "{oops")]),
    ChatChunk(usage=Usage(10, 5), finish_reason="tool_calls", model="m"),
]


def model() -> ChatModelPlug:
    llm = ChatModelPlug(**OPENAI, streaming=True, disable_streaming=True)

    def stream(request: object) -> Iterator[ChatChunk]:
        yield from CHUNKS

    async def astream(request: object) -> AsyncIterator[ChatChunk]:
        for chunk in CHUNKS:
            yield chunk

    llm.backend.stream = stream  # type: ignore[method-assign]
    llm.backend.astream = astream  # type: ignore[method-assign]
    return llm


def test_the_streaming_flag_collects_the_stream_sync_and_async() -> None:
    llm = model()
    for message in (llm.invoke("hi"), asyncio.run(llm.ainvoke("hi"))):
        assert message.content == "Calling it."
        # LangChain's chunks read partial JSON leniently: "{oops" gives {} (as its own stream)
        assert [(c["name"], c["args"], c["id"]) for c in message.tool_calls] == [
            ("magic", {"input": 3}, "c1"), ("broken", {}, "c2")]
        assert message.usage_metadata["total_tokens"] == 15
        assert message.response_metadata["finish_reason"] == "tool_calls"
