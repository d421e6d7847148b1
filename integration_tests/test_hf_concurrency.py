"""Many callers on one in-process transformers model: continuous batching on the real SmolLM2.

The model folder is the GGUF converted by the ``smollm2_hf_path`` session fixture (fp32, CPU).
Every batchable request is decoded by transformers' continuous-batching manager together with
the others; each must get its own answer (greedy: its prompt's answer alone, or where the batch
numerics part from it, still its own prompt's greedy decoding, see :class:`Oracle`), its own
constraints, its own stream, and fail or be cancelled alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_modelplug import ChatModelPlug
from modelplug import ChatRequest, create_backend
from modelplug.errors import ContextOverflowError, ProviderUnavailableError, ServerBusyError

QUESTIONS = [
    ("What is the capital of France? Answer in one sentence.", "Paris"),
    ("What is the capital of Italy? Answer in one sentence.", "Rome"),
    ("What is 2+2?", "4"),
]
PROMPTS = [q for q, _ in QUESTIONS] + [
    "What day comes after Monday?", "Name a color.", "Say hello.", "Name a fruit.", "What is the opposite of hot?",
    "Name an animal.", "What is water made of?", "Name a planet.", "Say goodbye.",
    "Name a country in Europe.", "What is ice?", "Name a musical instrument.", "Name a tree.",
]
MAX_TOKENS = 16
#: Largest accepted gap (in logits) between the model's top token and an answer's token where a
#: batched answer parts from the single one: fp32 batch numerics move logits by ~1e-5; a token
#: from another request's sequence is logits below the top one.
TOLERANCE = 0.01


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on 2 shared cores two spinning threads are slower, not faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_string(smollm2_hf_path: Path) -> str:
    return f"hf:{smollm2_hf_path}"


@pytest.fixture(scope="module")
def llm(model_string: str) -> ChatModelPlug:
    return ChatModelPlug(model=model_string, temperature=0, max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def singles(llm: ChatModelPlug) -> dict[str, str]:
    """Each prompt's answer on its own (one request at a time)."""
    return {p: llm.invoke(p).content for p in PROMPTS}


class Oracle:
    """Is an answer the greedy decoding of its own prompt? One plain forward pass of the same
    model over prompt + answer (no cache, no batch), every logit kept."""

    def __init__(self, backend) -> None:
        self.backend = backend

    def gap(self, prompt: str, answer: str) -> float:
        import torch

        backend = self.backend
        loaded = backend._loaded()
        lm = loaded.model
        ids = backend._plan(lm, ChatRequest([{"role": "user", "content": prompt}])).ids
        answer_ids = lm.encode(answer)
        if not answer_ids:
            return 0.0
        with backend._direct(loaded), torch.inference_mode():
            logits = lm.model(input_ids=torch.tensor([ids + answer_ids])).logits[0]
        rows = logits[len(ids) - 1:len(ids) - 1 + len(answer_ids)]
        chosen = rows[torch.arange(len(answer_ids)), torch.tensor(answer_ids)]
        return float((rows.max(dim=-1).values - chosen).max())

    def check(self, prompt: str, answer: str, single: str) -> None:
        """``answer`` is ``single`` (or a prefix of it: a smaller budget), or parts from it only
        where the model's logits are tied within :data:`TOLERANCE`."""
        if single.startswith(answer):
            return
        gap = self.gap(prompt, answer)
        assert gap <= TOLERANCE, (
            f"{answer!r} is not a greedy answer of {prompt!r} (a token {gap:.3f} logits below "
            f"the top one); alone it gave {single!r}")


@pytest.fixture(scope="module")
def oracle(llm: ChatModelPlug) -> Oracle:
    return Oracle(llm.backend)


def _check(oracle: Oracle, singles: dict[str, str], prompt: str, answer: str) -> None:
    oracle.check(prompt, answer, singles[prompt])
    for question, word in QUESTIONS:
        if prompt == question:
            assert word in answer


class _Watch:
    """The most requests serving_stats() saw running at once while the block ran."""

    def __init__(self, backend) -> None:
        self.backend, self.most = backend, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            stats = self.backend.serving_stats() or {}
            self.most = max(self.most, stats.get("running", 0))
            time.sleep(0.005)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class _NoPlainGenerate:
    """Counts calls of the model's own ``generate`` (the locked path)."""

    def __init__(self, backend) -> None:
        self.model = backend._loaded().model.model
        self.calls = 0

    def __enter__(self) -> _NoPlainGenerate:
        original = self.model.generate

        def counting(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        self.model.generate = counting
        return self

    def __exit__(self, *exc) -> None:
        del self.model.generate


async def test_16_concurrent_ainvoke_each_get_their_own_greedy_answer(
        llm, singles, oracle) -> None:
    with _Watch(llm.backend) as watch, _NoPlainGenerate(llm.backend) as plain:
        answers = await asyncio.gather(*(llm.ainvoke(p) for p in PROMPTS))
    for prompt, message in zip(PROMPTS, answers, strict=True):
        _check(oracle, singles, prompt, message.content)
    assert watch.most >= 2  # decoded together, not one after another
    assert plain.calls == 0
    stats = llm.backend.serving_stats()
    assert stats["running"] == 0 and stats["waiting"] == 0


def test_16_threads_each_get_their_own_greedy_answer(llm, singles, oracle) -> None:
    answers: dict[str, str] = {}
    barrier = threading.Barrier(len(PROMPTS))

    def call(prompt: str) -> None:
        barrier.wait(60)
        answers[prompt] = llm.invoke(prompt).content

    with _Watch(llm.backend) as watch:
        threads = [threading.Thread(target=call, args=(p,)) for p in PROMPTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert set(answers) == set(PROMPTS)
    for prompt in PROMPTS:
        _check(oracle, singles, prompt, answers[prompt])
    assert watch.most >= 2


async def test_concurrent_streams_interleave_and_each_assembles_to_its_answer(
        llm, singles, oracle) -> None:
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
        _check(oracle, singles, prompt, text)
    # Interleaved: some stream sent a chunk after another stream's first and before its last.
    first = {i: arrivals.index(i) for i in range(len(prompts))}
    last = {i: len(arrivals) - 1 - arrivals[::-1].index(i) for i in range(len(prompts))}
    assert any(first[j] < last[i] and first[i] < last[j]
               for i in first for j in first if i != j)


def test_sync_streams_from_threads_each_assemble_to_their_answer(llm, singles, oracle) -> None:
    prompts = PROMPTS[4:8]
    texts: dict[str, str] = {}

    def run(prompt: str) -> None:
        texts[prompt] = "".join(c.content for c in llm.stream(prompt))

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for prompt in prompts:
        _check(oracle, singles, prompt, texts[prompt])


class Answer(BaseModel):
    city: str
    country: str


@tool
def get_weather(city: str) -> str:
    """The current weather of a city."""
    return "sunny"


async def test_mixed_requests_in_one_batch_each_keep_their_own_constraints(llm) -> None:
    """A forced tool call, structured output, a plain answer with a stop sequence and one with a
    tiny budget, decoded together: each satisfies its own constraints, none another's."""
    tools = llm.bind_tools([get_weather], tool_choice="get_weather")
    structured = llm.with_structured_output(Answer)
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}},
              "required": ["answer"], "additionalProperties": False}
    json_answer = llm.bind(response_format={"type": "json_schema", "json_schema": {
        "name": "answer", "schema": schema}})
    with _Watch(llm.backend) as watch, _NoPlainGenerate(llm.backend) as plain:
        call, city, number, stopped, short = await asyncio.gather(
            tools.ainvoke("What is the weather in Paris?", max_tokens=40),
            structured.ainvoke("Paris is the capital of France. Give the city and its country.",
                               max_tokens=40),
            json_answer.ainvoke("What is 2 + 2? Answer as JSON.", max_tokens=24),
            llm.ainvoke("Count from 1 to 10, separated by commas.", stop=["5"], max_tokens=40),
            llm.ainvoke("Write a long story about a dragon.", max_tokens=3),
        )
    assert plain.calls == 0 and watch.most >= 2  # all five in the batch
    assert [c["name"] for c in call.tool_calls] == ["get_weather"]
    assert isinstance(call.tool_calls[0]["args"].get("city"), str)
    assert call.response_metadata["finish_reason"] == "tool_calls"
    assert isinstance(city, Answer)
    assert isinstance(json.loads(number.content)["answer"], int)
    assert "5" not in stopped.content and "4" in stopped.content
    assert stopped.response_metadata["finish_reason"] == "stop"
    assert short.usage_metadata["output_tokens"] == 3
    assert short.response_metadata["finish_reason"] == "length"


async def test_a_request_that_overflows_the_context_fails_alone(llm, singles, oracle) -> None:
    results = await asyncio.gather(llm.ainvoke(PROMPTS[5]), llm.ainvoke("word " * 9000),
                                   llm.ainvoke(PROMPTS[4]), return_exceptions=True)
    assert isinstance(results[1], ContextOverflowError)
    assert "8192" in str(results[1])
    _check(oracle, singles, PROMPTS[5], results[0].content)
    _check(oracle, singles, PROMPTS[4], results[2].content)


async def test_a_bad_grammar_fails_alone(llm) -> None:
    bad = llm.bind(response_format={"type": "json_schema", "json_schema": {
        "name": "bad", "schema": {"type": "object", "properties": {"x": {"$ref": "#/nope"}}}}})
    results = await asyncio.gather(llm.ainvoke(PROMPTS[6]), bad.ainvoke("Anything."),
                                   return_exceptions=True)
    assert isinstance(results[1], Exception)
    assert results[0].content


async def test_a_request_whose_own_processing_breaks_fails_alone(llm, singles, oracle,
                                                                monkeypatch) -> None:
    """An error in one request's logits processing (on the manager's generation thread) fails
    that request only; the batch and the manager go on."""
    from modelplug.backends.hf import batching

    real = batching.row_processors

    def breaking(lm, plan):
        penalties, warpers = real(lm, plan)
        if "boom" in str(plan.request.messages):
            def boom(ids, scores):
                raise RuntimeError("boom")
            penalties = [*penalties, boom]
        return penalties, warpers

    monkeypatch.setattr(batching, "row_processors", breaking)
    results = await asyncio.gather(llm.ainvoke(PROMPTS[7]), llm.ainvoke("Say boom."),
                                   llm.ainvoke(PROMPTS[8]), return_exceptions=True)
    assert isinstance(results[1], RuntimeError) and "boom" in str(results[1])
    _check(oracle, singles, PROMPTS[7], results[0].content)
    _check(oracle, singles, PROMPTS[8], results[2].content)
    scheduler = llm.backend._loaded().companions["scheduler"]
    assert scheduler.engine.manager.is_running()


def test_seeded_sampling_does_not_depend_on_the_batch(model_string: str) -> None:
    backend = create_backend(model_string)

    def ask(seed: int) -> ChatRequest:
        return ChatRequest([{"role": "user", "content": "Write a short poem about the sea."}],
                           temperature=1.2, seed=seed, max_tokens=10)

    alone = [backend.chat(ask(seed)).text for seed in (1, 2)]
    together = backend.batch([ask(1), ask(2), ask(1)])
    assert [r.text for r in together] == [alone[0], alone[1], alone[0]]


def test_penalties_are_batched_and_agree_with_generate(llm, singles, oracle,
                                                      model_string) -> None:
    """repetition_penalty is applied to its own row in the batch; the same request on the
    locked path (a backend without continuous batching: a plain generate while the batch waits
    paused) gives the same answer, while batched requests go on around it."""
    backend = llm.backend
    penalised = ChatRequest([{"role": "user", "content": PROMPTS[2]}], temperature=0,
                            max_tokens=MAX_TOKENS, extra={"repetition_penalty": 1.3})
    unbatched = create_backend(model_string, continuous_batching=False)
    with _NoPlainGenerate(backend) as plain:
        batched = backend.chat(penalised).text
    assert plain.calls == 0
    assert batched != singles[PROMPTS[2]]  # the penalty changed the greedy answer
    results: dict[str, str] = {}
    with _NoPlainGenerate(backend) as plain:
        threads = [threading.Thread(target=lambda p=p: results.__setitem__(
            p, llm.invoke(p).content)) for p in PROMPTS[:3]]
        threads.append(threading.Thread(target=lambda: results.__setitem__(
            "locked", unbatched.chat(penalised).text)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert plain.calls == 1
    assert results["locked"] == batched
    for prompt in PROMPTS[:3]:
        _check(oracle, singles, prompt, results[prompt])


@pytest.fixture(scope="module")
def small_backend(smollm2_hf_path: Path, tmp_path_factory):
    """The same weights under another folder (so another cache entry), batching one request at
    a time behind a queue of one, in a paged cache of 1536 tokens."""
    folder = tmp_path_factory.mktemp("smollm2-one")
    for entry in smollm2_hf_path.iterdir():
        os.symlink(entry, folder / entry.name)
    return create_backend(f"hf:{folder}", max_batch=1, max_queue=1, kv_cache_tokens=1536)


LONG = ChatRequest([{"role": "user", "content": "Write a very long story about a dragon."}],
                   temperature=0, max_tokens=1000)
SHORT = ChatRequest([{"role": "user", "content": "Say hello."}], temperature=0, max_tokens=4)


def _wait_for(backend, key: str, value: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while backend.serving_stats()[key] != value and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend.serving_stats()[key] == value


def test_a_stream_closed_early_frees_its_slot_at_once(small_backend) -> None:
    stream = small_backend.stream(LONG)
    next(stream)
    assert small_backend.serving_stats()["running"] == 1
    stream.close()  # the consumer stops reading
    _wait_for(small_backend, "running", 0)
    # The only slot is free: a short request is answered without waiting for 2000 tokens.
    assert small_backend.chat(SHORT).usage.output_tokens <= 4


async def test_a_cancelled_task_frees_its_slot(small_backend) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in small_backend.astream(LONG):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    short = await asyncio.wait_for(small_backend.achat(SHORT), 120)
    assert short.usage.output_tokens <= 4
    # The answer reaches its caller a moment before the worker retires the finished request.
    _wait_for(small_backend, "running", 0)


def test_a_full_queue_is_a_clear_server_busy_error(small_backend) -> None:
    running = small_backend.stream(LONG)
    next(running)  # admitted: the only place in the batch is taken
    queued = small_backend.stream(LONG)
    waiting = threading.Thread(target=lambda: next(queued, None))
    waiting.start()
    try:
        _wait_for(small_backend, "waiting", 1)
        with pytest.raises(ServerBusyError, match="max_queue=1"):
            small_backend.chat(SHORT)
    finally:
        running.close()
        waiting.join(120)
        queued.close()
    _wait_for(small_backend, "running", 0)


def test_a_request_longer_than_the_paged_cache_takes_the_locked_path(small_backend) -> None:
    longer = ChatRequest(LONG.messages, temperature=0, max_tokens=2000)
    with _NoPlainGenerate(small_backend) as plain:
        stream = small_backend.stream(longer)
        next(stream)
        assert small_backend.serving_stats()["running"] == 0  # not in the batch
        stream.close()
    assert plain.calls == 1
    assert small_backend.chat(SHORT).usage.output_tokens <= 4  # the batch goes on


def test_shutdown_stops_generation_promptly(small_backend) -> None:
    """Last on the small model: shutdown fails what runs, stops the manager, refuses more."""
    from modelplug import scheduling

    stream = small_backend.stream(LONG)
    next(stream)
    loaded = small_backend._loaded()
    scheduler = loaded.companions["scheduler"]
    assert scheduler in scheduling._schedulers  # shutdown_all() reaches it
    scheduler.shutdown("test", timeout=10)
    with pytest.raises(ProviderUnavailableError, match="shut down"):
        list(stream)
    assert not scheduler.engine.manager.is_running()
    assert small_backend.serving_stats()["closed"]
    # The model still answers, on its locked path.
    assert small_backend.chat(SHORT).text


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(PROMPTS), st.integers(min_value=1, max_value=12)),
                min_size=2, max_size=8))
def test_no_request_sees_another_requests_tokens(llm, singles, oracle, calls) -> None:
    """Generated mixes of prompts and budgets, decoded together: every answer is its own
    prompt's greedy answer (never another's tokens) and stops within its own budget."""
    requests = [ChatRequest([{"role": "user", "content": p}], temperature=0, max_tokens=n)
                for p, n in calls]
    answers = llm.backend.batch(requests)
    for (prompt, n), answer in zip(calls, answers, strict=True):
        assert answer.usage.output_tokens <= n
        oracle.check(prompt, answer.text, singles[prompt])
