"""Cost per call (modelplug.accounting over genai-prices) through the real SDKs and the wire fakes.

Expected numbers are computed here by hand from the published prices, written out below as
genai-prices 0.2.3 lists them (USD per million tokens), not by calling the code under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fakes.anthropic_api import API_KEY as ANTHROPIC_KEY
from fakes.anthropic_api import FakeAnthropic
from fakes.openai_api import API_KEY as OPENAI_KEY
from fakes.openai_api import FakeOpenAI, usage_block
from fakes.server import LoopbackServer
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_modelplug import ChatModelPlug

# claude-sonnet-4-6: input $3, output $15, cache read $0.30, 5-minute cache write $3.75.
SONNET_IN, SONNET_OUT, SONNET_READ, SONNET_WRITE = 3.0, 15.0, 0.30, 3.75
# o3-mini: input $1.10, output $4.40 (reasoning tokens are output), cached input $0.55.
O3M_IN, O3M_OUT, O3M_READ = 1.10, 4.40, 0.55
M = 1_000_000


@pytest.fixture
def anthropic() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    srv = LoopbackServer(fake.app).start()
    yield fake, srv.url
    srv.stop()


@pytest.fixture
def openai() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    srv = LoopbackServer(fake.app).start()
    yield fake, f"{srv.url}/v1"
    srv.stop()


def _fold(chunks):
    full = None
    for chunk in chunks:
        full = chunk if full is None else full + chunk
    return full


def test_cached_anthropic_call_costs_what_anthropic_bills(anthropic) -> None:
    fake, url = anthropic
    llm = ChatModelPlug(model="anthropic:claude-sonnet-4-6", base_url=url, api_key=ANTHROPIC_KEY,
                        cache_prompt=True, max_retries=0)
    prompt = [SystemMessage("A long, stable system prompt."), HumanMessage("Weather in Oslo?")]

    # First call writes 1800 tokens to the cache: 12 plain input, 1800 written, 5 out.
    fake.reply([{"type": "text", "text": "first"}], input_tokens=12, output_tokens=5,
               cache_creation_input_tokens=1800, cache_read_input_tokens=0)
    cost = llm.invoke(prompt).response_metadata["cost"]
    assert cost["input"] == pytest.approx((12 * SONNET_IN + 1800 * SONNET_WRITE) / M)
    assert cost["output"] == pytest.approx(5 * SONNET_OUT / M)
    assert cost["total"] == pytest.approx(0.006861)  # 0.000036 + 0.00675 + 0.000075
    assert cost["currency"] == "USD" and cost["source"].startswith("genai-prices")

    # Second call, streamed, reads them: a tenth of the input price.
    fake.reply([{"type": "text", "text": "second"}], input_tokens=12, output_tokens=6,
               cache_creation_input_tokens=0, cache_read_input_tokens=1800)
    full = _fold(llm.stream(prompt))
    assert full.usage_metadata["input_token_details"] == {"cache_read": 1800, "cache_creation": 0}
    assert full.response_metadata["cost"]["total"] == pytest.approx(
        (12 * SONNET_IN + 1800 * SONNET_READ + 6 * SONNET_OUT) / M)  # 0.000666


def test_openai_reasoning_call_bills_reasoning_as_output_and_cached_input(openai) -> None:
    fake, url = openai
    llm = ChatModelPlug(model="openai:o3-mini", base_url=url, api_key=OPENAI_KEY, max_retries=0)
    # 20 input of which 8 cached; 150 output of which 140 reasoning.
    expected = ((20 - 8) * O3M_IN + 8 * O3M_READ + 150 * O3M_OUT) / M  # 0.0006792
    fake.reply({"content": "4"}, usage=usage_block(prompt=20, completion=150, cached=8,
                                                   reasoning=140))
    msg = llm.invoke("2+2?")
    assert msg.usage_metadata["output_token_details"] == {"reasoning": 140}
    assert msg.response_metadata["cost"]["total"] == pytest.approx(expected)
    assert msg.response_metadata["cost"]["output"] == pytest.approx(150 * O3M_OUT / M)

    fake.reply_stream([{"content": "4"}], usage=usage_block(prompt=20, completion=150, cached=8,
                                                            reasoning=140))
    full = _fold(llm.stream("2+2?"))
    assert full.response_metadata["cost"]["total"] == pytest.approx(expected)

    fake.reply({"content": "4"}, usage=usage_block(prompt=20, completion=150, cached=8,
                                                   reasoning=140))
    msg = asyncio.run(llm.ainvoke("2+2?"))
    assert msg.response_metadata["cost"]["total"] == pytest.approx(expected)


def test_llamaindex_raw_carries_the_cost(openai) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.modelplug import ModelPlug

    fake, url = openai
    llm = ModelPlug(model="openai:o3-mini", base_url=url, api_key=OPENAI_KEY, max_retries=0)
    expected = ((20 - 8) * O3M_IN + 8 * O3M_READ + 150 * O3M_OUT) / M
    fake.reply({"content": "4"}, usage=usage_block(prompt=20, completion=150, cached=8,
                                                   reasoning=140))
    response = llm.chat([ChatMessage(role="user", content="2+2?")])
    assert response.raw["cost"]["total"] == pytest.approx(expected)

    fake.reply_stream([{"content": "4"}], usage=usage_block(prompt=20, completion=150, cached=8,
                                                            reasoning=140))
    last = list(llm.stream_chat([ChatMessage(role="user", content="2+2?")]))[-1]
    assert last.raw["cost"]["total"] == pytest.approx(expected)


def test_a_model_no_table_prices_is_unknown_not_guessed(openai) -> None:
    fake, url = openai
    llm = ChatModelPlug(model="deepinfra:acme/secret-model", base_url=url, api_key=OPENAI_KEY,
                        max_retries=0)
    fake.reply({"content": "hi"})
    cost = llm.invoke("hi").response_metadata["cost"]
    assert cost["total"] is None and cost["input"] is None
    assert "deepinfra:acme/secret-model" in cost["reason"] and "set_price" in cost["reason"]


# -- totals across a run: langchain_modelplug.UsageCostHandler ----------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def smollm2() -> ChatModelPlug:
    return ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=8)


def test_handler_totals_a_chain_on_the_real_local_model(smollm2: ChatModelPlug) -> None:
    from langchain_core.prompts import ChatPromptTemplate

    from langchain_modelplug import UsageCostHandler

    handler = UsageCostHandler()
    chain = ChatPromptTemplate.from_messages([("human", "Name a {thing}.")]) | smollm2
    config = {"callbacks": [handler]}
    answers = [chain.invoke({"thing": "colour"}, config=config),
               _fold(chain.stream({"thing": "fruit"}, config=config)),
               asyncio.run(chain.ainvoke({"thing": "city"}, config=config))]
    assert list(handler.totals.by_model) == [f"llamacpp:{answers[0].response_metadata['model_name']}"]
    row = next(iter(handler.totals.by_model.values()))
    assert row.calls == 3
    assert row.input_tokens == sum(a.usage_metadata["input_tokens"] for a in answers) > 0
    assert row.output_tokens == sum(a.usage_metadata["output_tokens"] for a in answers) > 0
    assert row.cost == 0 and row.unpriced_calls == 0 and row.failed_attempts == 0
    assert handler.totals.total_tokens == row.input_tokens + row.output_tokens


def test_handler_counts_failed_fallback_attempts_apart(smollm2: ChatModelPlug) -> None:
    from langchain_modelplug import FallbackChatModel, UsageCostHandler

    dead = ChatModelPlug(model="vllm:dead", base_url=f"http://127.0.0.1:{_free_port()}/v1",
                         max_retries=0, timeout=10)
    handler = UsageCostHandler()
    message = FallbackChatModel([dead, smollm2]).invoke("Hi", config={"callbacks": [handler]})
    by_model = handler.totals.by_model
    assert by_model["vllm:dead"].failed_attempts == 1 and by_model["vllm:dead"].calls == 0
    answered = by_model["llamacpp:smollm2"]
    assert (answered.calls, answered.failed_attempts) == (1, 0)
    assert answered.output_tokens == message.usage_metadata["output_tokens"]


def test_handler_totals_cloud_costs_per_model(anthropic, openai) -> None:
    from langchain_core.runnables import RunnableParallel

    from langchain_modelplug import UsageCostHandler

    (afake, aurl), (ofake, ourl) = anthropic, openai
    claude = ChatModelPlug(model="anthropic:claude-sonnet-4-6", base_url=aurl,
                           api_key=ANTHROPIC_KEY, max_retries=0)
    o3 = ChatModelPlug(model="openai:o3-mini", base_url=ourl, api_key=OPENAI_KEY, max_retries=0)
    for _ in range(2):
        afake.reply([{"type": "text", "text": "a"}], input_tokens=12, output_tokens=6,
                    cache_creation_input_tokens=0, cache_read_input_tokens=1800)
        ofake.reply({"content": "4"}, usage=usage_block(prompt=20, completion=150, cached=8,
                                                        reasoning=140))
    handler = UsageCostHandler()
    both = RunnableParallel(claude=claude, o3=o3)
    both.batch(["q1", "q2"], config={"callbacks": [handler]})
    claude_each = (12 * SONNET_IN + 1800 * SONNET_READ + 6 * SONNET_OUT) / M
    o3_each = ((20 - 8) * O3M_IN + 8 * O3M_READ + 150 * O3M_OUT) / M
    rows = handler.totals.by_model
    assert float(rows["anthropic:claude-sonnet-4-6"].cost) == pytest.approx(2 * claude_each)
    assert rows["anthropic:claude-sonnet-4-6"].cache_read_tokens == 3600
    assert float(rows["openai:o3-mini"].cost) == pytest.approx(2 * o3_each)
    assert rows["openai:o3-mini"].reasoning_tokens == 280
    assert float(handler.totals.total_cost) == pytest.approx(2 * (claude_each + o3_each))


# -- totals across a query: llama_index.llms.modelplug.UsageCostEventHandler --------------------


@pytest.fixture
def li_handler():
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.llms.modelplug import UsageCostEventHandler

    handler = UsageCostEventHandler()
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def test_llamaindex_handler_totals_the_real_local_model(li_handler) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.modelplug import ModelPlug

    llm = ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=8)
    answers = [llm.chat([ChatMessage(role="user", content="Name a colour.")]),
               list(llm.stream_chat([ChatMessage(role="user", content="Name a fruit.")]))[-1],
               llm.complete("Name a city.")]
    rows = li_handler.totals.by_model
    assert len(rows) == 1
    row = next(iter(rows.values()))
    assert row.calls == 3 and row.cost == 0 and row.unpriced_calls == 0
    assert row.input_tokens == sum(a.raw["usage"]["prompt_tokens"] for a in answers) > 0
    assert row.output_tokens == sum(a.raw["usage"]["completion_tokens"] for a in answers) > 0


@pytest.mark.parametrize("stream", [False, True])
def test_llamaindex_handler_counts_fallback_once_and_failures_apart(li_handler, openai,
                                                                   stream: bool) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.modelplug import FallbackLLM, ModelPlug

    fake, url = openai
    dead = ModelPlug(model="vllm:dead", base_url=f"http://127.0.0.1:{_free_port()}/v1",
                     max_retries=0, timeout=10)
    o3 = ModelPlug(model="openai:o3-mini", base_url=url, api_key=OPENAI_KEY, max_retries=0)
    usage = usage_block(prompt=20, completion=150, cached=8, reasoning=140)
    messages = [ChatMessage(role="user", content="2+2?")]
    if stream:
        fake.reply_stream([{"content": "4"}], usage=usage)
        list(FallbackLLM([dead, o3]).stream_chat(messages))
    else:
        fake.reply({"content": "4"}, usage=usage)
        FallbackLLM([dead, o3]).chat(messages)
    rows = li_handler.totals.by_model
    assert rows["vllm:dead"].failed_attempts == 1 and rows["vllm:dead"].calls == 0
    assert rows["openai:o3-mini"].calls == 1
    assert float(rows["openai:o3-mini"].cost) == pytest.approx(
        ((20 - 8) * O3M_IN + 8 * O3M_READ + 150 * O3M_OUT) / M)


# gpt-audio: text input $2.50, text output $10, audio input $32, audio output $64.
AUDIO_TEXT_IN, AUDIO_TEXT_OUT, AUDIO_IN, AUDIO_OUT = 2.50, 10.0, 32.0, 64.0


def test_audio_tokens_are_counted_and_priced_apart(openai) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.modelplug import ModelPlug

    from langchain_modelplug import UsageCostHandler

    fake, url = openai
    # 100 input of which 40 audio; 50 output of which 30 audio.
    usage = usage_block(prompt=100, completion=50, audio_in=40, audio_out=30)
    expected_in = (60 * AUDIO_TEXT_IN + 40 * AUDIO_IN) / M  # 0.00143
    expected_out = (20 * AUDIO_TEXT_OUT + 30 * AUDIO_OUT) / M  # 0.00212
    llm = ChatModelPlug(model="openai:gpt-audio;tools", base_url=url, api_key=OPENAI_KEY,
                        max_retries=0)
    handler = UsageCostHandler()
    fake.reply({"content": "hi"}, usage=usage)
    msg = llm.invoke("hi", config={"callbacks": [handler]})
    assert msg.usage_metadata["input_token_details"] == {"audio": 40}
    assert msg.usage_metadata["output_token_details"] == {"audio": 30}
    assert msg.response_metadata["cost"]["input"] == pytest.approx(expected_in)
    assert msg.response_metadata["cost"]["output"] == pytest.approx(expected_out)
    row = handler.totals.by_model["openai:gpt-audio"]
    assert (row.audio_input_tokens, row.audio_output_tokens) == (40, 30)

    fake.reply_stream([{"content": "hi"}], usage=usage)
    full = _fold(llm.stream("hi"))
    assert full.usage_metadata["output_token_details"] == {"audio": 30}
    assert full.response_metadata["cost"]["total"] == pytest.approx(expected_in + expected_out)

    fake.reply({"content": "hi"}, usage=usage)
    response = ModelPlug(model="openai:gpt-audio;tools", base_url=url, api_key=OPENAI_KEY,
                         max_retries=0).chat([ChatMessage(role="user", content="hi")])
    assert (response.raw["usage"]["input_audio_tokens"],
            response.raw["usage"]["output_audio_tokens"]) == (40, 30)
    assert response.raw["cost"]["total"] == pytest.approx(expected_in + expected_out)
