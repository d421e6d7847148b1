"""``anthropic:`` through the official anthropic SDK against a real llama-server's Messages API
(SmolLM2-135M-Instruct): invoke, stream, async, usage and stop reasons, end to end."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_modelplug import ChatModelPlug

PARIS = "What is the capital of France? Answer in one sentence."
# An ad-hoc id: the closed Anthropic catalog admits it because ;flags declare it.
MODEL = "anthropic:smollm2;tools"


@pytest.fixture(scope="module")
def llm(llama_server: str) -> ChatModelPlug:
    # The SDK's default retries, as every other llama-server module uses: with max_retries=0,
    # the request after a stream twice met "Server disconnected without sending a response" in
    # full runs while llama-server's log shows it alive and never receiving that request (a
    # pooled keep-alive connection the server had closed); the SDK resends such a request.
    return ChatModelPlug(model=MODEL, base_url=llama_server, api_key="test", temperature=0,
                         max_tokens=40, max_retries=2, timeout=120)


def _fold(chunks):
    full = None
    for chunk in chunks:
        full = chunk if full is None else full + chunk
    return full


def test_invoke_answers_with_usage(llm):
    msg = llm.invoke([SystemMessage("You are a helpful assistant."), HumanMessage(PARIS)])
    assert "Paris" in msg.content
    usage = msg.usage_metadata
    assert usage["input_tokens"] > 10  # the system prompt and question, templated
    assert 0 < usage["output_tokens"] <= 40
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert msg.response_metadata["finish_reason"] in ("stop", "length")
    assert msg.response_metadata["model_provider"] == "anthropic"


def test_stream_matches_invoke_under_greedy_decoding(llm):
    invoked = llm.invoke(PARIS)
    chunks = list(llm.stream(PARIS))
    assert len([c for c in chunks if c.content]) > 1  # really streamed
    full = _fold(chunks)
    assert full.content == invoked.content
    assert full.usage_metadata["output_tokens"] == invoked.usage_metadata["output_tokens"]
    assert full.usage_metadata["input_tokens"] == invoked.usage_metadata["input_tokens"]
    assert full.response_metadata["finish_reason"] == invoked.response_metadata["finish_reason"]


def test_max_tokens_gives_length(llm):
    msg = llm.invoke(PARIS, max_tokens=3)
    assert msg.response_metadata["finish_reason"] == "length"
    assert msg.usage_metadata["output_tokens"] == 3


async def test_ainvoke_and_astream(llm):
    msg = await llm.ainvoke(PARIS)
    assert "Paris" in msg.content
    full = None
    async for chunk in llm.astream(PARIS):
        full = chunk if full is None else full + chunk
    assert full.content == msg.content
    assert full.usage_metadata["output_tokens"] == msg.usage_metadata["output_tokens"]
