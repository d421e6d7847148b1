"""Many callers on one in-process llama.cpp model: continuous batching on the real SmolLM2 GGUF.

Every request is decoded in one llama_batch with the others (the model's scheduler); each must
get its own answer (greedy: the answer it gets alone, or where a near tie flipped, still its own
prompt's greedy choice at every token: see greedy.py), its own constraints, its own stream, and
fail or be cancelled alone.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from greedy import chat_tokens
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_modelplug import ChatModelPlug
from modelplug import ChatRequest, create_backend
from modelplug.errors import ContextOverflowError, ServerBusyError

QUESTIONS = [
    ("What is the capital of France? Answer in one sentence.", "Paris"),
    ("What is the capital of Italy? Answer in one sentence.", "Rome"),
    ("What is 2 + 2?", "4"),
]
PROMPTS = [q for q, _ in QUESTIONS] + ["What day comes after Monday?",
    "Name a colour.", "Say hello.", "Name a fruit.", "What is the opposite of hot?",
    "Name an animal.", "What is water made of?", "Name a planet.", "Say goodbye.",
    "Name a country in Europe.", "What is ice?", "Name a musical instrument.", "Name a tree.",
]


@pytest.fixture(scope="module")
def llm() -> ChatModelPlug:
    return ChatModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def singles(llm: ChatModelPlug) -> dict[str, str]:
    """Each prompt's answer on its own (one request at a time)."""
    return {p: llm.invoke(p).content for p in PROMPTS}


def _tokens(llm: ChatModelPlug, prompt: str) -> list[int]:
    return chat_tokens(llm.backend, [{"role": "user", "content": prompt}])


def _check(llm, oracle, singles: dict[str, str], prompt: str, answer: str) -> None:
    oracle.assert_greedy(_tokens(llm, prompt), answer, singles[prompt])
    for question, word in QUESTIONS:
        if prompt == question and answer == singles[prompt]:
            assert word in answer


async def test_16_concurrent_ainvoke_each_get_their_own_greedy_answer(
        llm, singles, greedy_oracle) -> None:
    answers = await asyncio.gather(*(llm.ainvoke(p) for p in PROMPTS))
    for prompt, message in zip(PROMPTS, answers, strict=True):
        _check(llm, greedy_oracle, singles, prompt, message.content)
    stats = llm.backend.serving_stats()
    assert stats["peak_running"] == stats["capacity"]  # 16 callers filled every slot
    assert stats["running"] == 0 and stats["waiting"] == 0


def test_16_threads_each_get_their_own_greedy_answer(llm, singles, greedy_oracle) -> None:
    answers: dict[str, str] = {}
    barrier = threading.Barrier(len(PROMPTS))

    def call(prompt: str) -> None:
        barrier.wait(30)
        answers[prompt] = llm.invoke(prompt).content

    threads = [threading.Thread(target=call, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(answers) == set(PROMPTS)
    for prompt in PROMPTS:
        _check(llm, greedy_oracle, singles, prompt, answers[prompt])


async def test_concurrent_streams_interleave_and_each_assembles_to_its_answer(
        llm, singles, greedy_oracle) -> None:
    prompts = PROMPTS[:6]
    arrivals: list[int] = []

    async def collect(i: int, prompt: str) -> str:
        parts = []
        async for chunk in llm.astream(prompt):
            arrivals.append(i)
            parts.append(chunk.content)
        return "".join(parts)

    texts = await asyncio.gather(*(collect(i, p) for i, p in enumerate(prompts)))
    for prompt, text in zip(prompts, texts, strict=True):
        _check(llm, greedy_oracle, singles, prompt, text)
    # Interleaved: some stream sent a chunk after another stream's first and before its last.
    first = {i: arrivals.index(i) for i in range(len(prompts))}
    last = {i: len(arrivals) - 1 - arrivals[::-1].index(i) for i in range(len(prompts))}
    assert any(first[j] < last[i] and first[i] < last[j]
               for i in first for j in first if i != j)


def test_a_stream_closed_early_frees_its_slot_at_once(llm) -> None:
    backend = create_backend("llamacpp:smollm2", n_parallel=1)
    long = ChatRequest([{"role": "user", "content": "Write a very long story about a dragon."}],
                       temperature=0, max_tokens=2000)
    stream = backend.stream(long)
    next(stream)
    stream.close()  # the consumer stops reading
    deadline = time.monotonic() + 10
    while backend.serving_stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.serving_stats()["running"] == 0
    # The only slot is free: a short request is answered without waiting for 2000 tokens.
    short = backend.chat(ChatRequest([{"role": "user", "content": "Say hello."}],
                                     temperature=0, max_tokens=4))
    assert short.usage.output_tokens <= 4


async def test_a_cancelled_task_frees_its_slot() -> None:
    backend = create_backend("llamacpp:smollm2", n_parallel=1)
    long = ChatRequest([{"role": "user", "content": "Write a very long story about a dragon."}],
                       temperature=0, max_tokens=2000)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.astream(long):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    short = await asyncio.wait_for(backend.achat(ChatRequest(
        [{"role": "user", "content": "Say hello."}], temperature=0, max_tokens=4)), 60)
    assert short.usage.output_tokens <= 4
    # The worker retires a request just after its last chunk is delivered: wait for that.
    deadline = time.monotonic() + 10
    while backend.serving_stats()["running"] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert backend.serving_stats()["running"] == 0


class Answer(BaseModel):
    city: str
    country: str


@tool
def get_weather(city: str) -> str:
    """The current weather of a city."""
    return "sunny"


async def test_mixed_requests_in_one_batch_each_keep_their_own_constraints(llm) -> None:
    """A forced tool call, a JSON-schema answer, a plain answer with a stop sequence and one with
    a tiny budget, decoded together: each satisfies its own constraints, none another's."""
    tools = llm.bind_tools([get_weather], tool_choice="get_weather")
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}},
              "required": ["answer"], "additionalProperties": False}
    structured = llm.bind(response_format={"type": "json_schema", "json_schema": {
        "name": "answer", "schema": schema}})
    call, number, stopped, short = await asyncio.gather(
        tools.ainvoke("What is the weather in Paris?"),
        structured.ainvoke("What is 2 + 2? Answer as JSON."),
        llm.ainvoke("Count from 1 to 10, separated by commas.", stop=["5"]),
        llm.ainvoke("Write a long story about a dragon.", max_tokens=3),
    )
    assert [c["name"] for c in call.tool_calls] == ["get_weather"]
    assert isinstance(call.tool_calls[0]["args"].get("city"), str)
    assert isinstance(json.loads(number.content)["answer"], int)
    assert "5" not in stopped.content and stopped.response_metadata["finish_reason"] == "stop"
    assert short.usage_metadata["output_tokens"] == 3
    assert short.response_metadata["finish_reason"] == "length"


async def test_a_request_that_overflows_the_context_fails_alone() -> None:
    small = ChatModelPlug(model="llamacpp:smollm2", n_ctx=256, temperature=0, max_tokens=8)
    huge = "word " * 400
    results = await asyncio.gather(small.ainvoke("Say hello."), small.ainvoke(huge),
                                   small.ainvoke("Name a colour."), return_exceptions=True)
    assert isinstance(results[1], ContextOverflowError)
    assert "256" in str(results[1])
    assert results[0].content and results[2].content


def test_a_full_queue_is_a_clear_server_busy_error() -> None:
    backend = create_backend("llamacpp:smollm2", n_parallel=1, max_queue=1)
    long = ChatRequest([{"role": "user", "content": "Write a very long story."}],
                       temperature=0, max_tokens=200)
    running = backend.stream(long)
    next(running)  # admitted: the only slot is taken
    queued = backend.stream(long)
    waiting = threading.Thread(target=lambda: list(queued))
    waiting.start()
    deadline = time.monotonic() + 10
    while backend.serving_stats()["waiting"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        with pytest.raises(ServerBusyError, match="max_queue=1"):
            backend.chat(long)
    finally:
        running.close()
        waiting.join(120)


def test_the_next_turn_of_a_conversation_reuses_the_cached_prefix(llm) -> None:
    history = [("user", "Name a fruit.")]
    first = llm.invoke(history)
    history += [("assistant", first.content), ("user", "Name another one.")]
    second = llm.invoke(history)
    details = second.usage_metadata.get("input_token_details") or {}
    # Everything up to the first answer was already in the cache.
    assert details.get("cache_read", 0) >= first.usage_metadata["input_tokens"]


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(PROMPTS), st.integers(min_value=1, max_value=12)),
                min_size=2, max_size=8))
def test_no_request_sees_another_requests_tokens(llm, greedy_oracle, calls) -> None:
    """Generated mixes of prompts and budgets, decoded together: every answer is its own
    prompt's greedy answer at every token (never another's tokens), cut at its own budget."""
    backend = llm.backend
    requests = [ChatRequest([{"role": "user", "content": p}], temperature=0, max_tokens=n)
                for p, n in calls]
    answers = backend.batch(requests)
    for (prompt, budget), answer in zip(calls, answers, strict=True):
        assert answer.usage.output_tokens <= budget
        greedy_oracle.assert_greedy(_tokens(llm, prompt), answer.text)


async def test_llama_index_achat_and_astream_chat_run_together(
        llm, singles, greedy_oracle) -> None:
    """LlamaIndex's async calls (a query engine's, a workflow's) share the batch too."""
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.modelplug import ModelPlug

    index_llm = ModelPlug(model="llamacpp:smollm2", temperature=0, max_tokens=24)
    prompts = PROMPTS[:4]

    async def streamed(prompt: str) -> str:
        text = ""
        async for part in await index_llm.astream_chat([ChatMessage(role="user",
                                                                    content=prompt)]):
            text = part.message.content
        return text

    chats = [index_llm.achat([ChatMessage(role="user", content=p)]) for p in prompts]
    results = await asyncio.gather(*chats, *(streamed(p) for p in prompts))
    texts = [r.message.content for r in results[:4]] + list(results[4:])
    for prompt, text in zip(prompts + prompts, texts, strict=True):
        _check(llm, greedy_oracle, singles, prompt, text)


def test_seeded_sampling_is_reproducible_under_concurrency() -> None:
    """Each request draws from its own seeded sampler: the same seed draws the same tokens beside
    another request (two identical requests in one batch)."""
    backend = create_backend("llamacpp:smollm2")
    ask = ChatRequest([{"role": "user", "content": "Tell me a short fact about cats."}],
                      temperature=1.0, seed=1234, max_tokens=12)
    together = backend.batch([ask, ask])
    assert together[0].text == together[1].text
    unseeded = {r.text for r in backend.batch([ChatRequest(ask.messages, temperature=1.0,
                                                           max_tokens=12)] * 4)}
    assert len(unseeded) > 1  # without a seed, each request draws on its own
