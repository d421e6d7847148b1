"""The scheduler's own rules (admission, back-pressure, cancellation, failure isolation,
shutdown), driven by a small engine that "generates" a request's characters one per step.

The real engines (llama.cpp, transformers) are tested on real models in integration_tests; this
engine only makes each rule observable without weights.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelplug.errors import ProviderUnavailableError, ServerBusyError
from modelplug.scheduling import Scheduler, Ticket


class SpellEngine:
    """Each request is a word; every step emits the next letter of every running word."""

    def __init__(self, capacity: int = 4, step_delay: float = 0.0) -> None:
        self.capacity = capacity
        self.step_delay = step_delay
        self.batches: list[int] = []  # requests per step
        self.released: list[str] = []
        self.gate = threading.Event()  # held: no step runs
        self.gate.set()
        self.admitting = threading.Event()  # held: no request is admitted
        self.admitting.set()

    def admit(self, ticket: Ticket, running: list[Ticket]) -> bool:
        self.admitting.wait(5)
        if ticket.job == "BAD":
            raise ValueError("this request cannot run")
        ticket.state = 0
        return True

    def step(self, running: list[Ticket]) -> list[Ticket]:
        self.gate.wait(5)
        time.sleep(self.step_delay)
        self.batches.append(len(running))
        if any(t.job == "BOOM" for t in running):
            raise RuntimeError("the batch broke")
        done = []
        for ticket in running:
            ticket.put(ticket.job[ticket.state])
            ticket.state += 1
            if ticket.state == len(ticket.job):
                ticket.finish()
                done.append(ticket)
        return done

    def release(self, ticket: Ticket) -> None:
        self.released.append(ticket.job)

    def close(self) -> None:
        pass


def spell(scheduler: Scheduler, word: str) -> str:
    return "".join(scheduler.submit(word))


def test_concurrent_requests_share_steps_and_each_gets_its_own_output() -> None:
    engine = SpellEngine(capacity=8)
    scheduler = Scheduler(engine, name="spell")
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    results: dict[str, str] = {}
    threads = [threading.Thread(target=lambda w=w: results.__setitem__(w, spell(scheduler, w)))
               for w in words]
    engine.gate.clear()  # hold the first step until every request is queued
    for t in threads:
        t.start()
    while scheduler.stats()["waiting"] + scheduler.stats()["running"] < len(words):
        time.sleep(0.01)
    engine.gate.set()
    for t in threads:
        t.join(10)
    assert results == {w: w for w in words}
    assert max(engine.batches) > 1  # decoded together, not one after another
    assert scheduler.stats()["completed"] == len(words)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=12), min_size=1, max_size=12),
       st.integers(min_value=1, max_value=5))
def test_no_request_sees_another_requests_output(words: list[str], capacity: int) -> None:
    scheduler = Scheduler(SpellEngine(capacity=capacity), name="spell")
    tickets = [scheduler.submit(w) for w in words]
    assert ["".join(t) for t in tickets] == words


async def test_async_consumers_are_served_on_their_loop() -> None:
    scheduler = Scheduler(SpellEngine(), name="spell")
    loop = asyncio.get_running_loop()

    async def aspell(word: str) -> str:
        return "".join([c async for c in scheduler.submit(word, loop)])

    assert await asyncio.gather(*(aspell(w) for w in ["one", "two", "three"])) == \
        ["one", "two", "three"]


def test_a_request_that_cannot_be_admitted_fails_alone() -> None:
    scheduler = Scheduler(SpellEngine(), name="spell")
    bad, good = scheduler.submit("BAD"), scheduler.submit("good")
    with pytest.raises(ValueError, match="cannot run"):
        list(bad)
    assert "".join(good) == "good"


def test_a_broken_step_fails_the_batch_and_the_scheduler_goes_on() -> None:
    engine = SpellEngine()
    scheduler = Scheduler(engine, name="spell")
    # Both must be admitted into one step: hold admission until both are queued (holding only
    # the step let the worker admit BOOM alone before "other" arrived).
    engine.admitting.clear()
    boom, other = scheduler.submit("BOOM"), scheduler.submit("other")
    while scheduler.stats()["waiting"] < 2:
        time.sleep(0.01)
    engine.admitting.set()
    with pytest.raises(RuntimeError, match="batch broke"):
        list(boom)
    with pytest.raises(RuntimeError, match="batch broke"):
        list(other)
    assert spell(scheduler, "after") == "after"


def test_a_consumer_that_stops_reading_frees_its_slot() -> None:
    engine = SpellEngine(capacity=1, step_delay=0.01)
    scheduler = Scheduler(engine, name="spell")
    stream = iter(scheduler.submit("x" * 10_000))
    assert next(stream) == "x"
    stream.close()  # as a caller's `break` does
    assert spell(scheduler, "next") == "next"  # the only slot was given back
    assert "x" * 10_000 in engine.released


async def test_a_cancelled_task_frees_its_slot() -> None:
    engine = SpellEngine(capacity=1, step_delay=0.01)
    scheduler = Scheduler(engine, name="spell")
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in scheduler.submit("y" * 10_000, loop):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "".join([c async for c in scheduler.submit("free", loop)]) == "free"


def test_a_full_queue_refuses_with_server_busy_naming_the_setting() -> None:
    engine = SpellEngine(capacity=1)
    scheduler = Scheduler(engine, name="'llamacpp:tiny'", max_queue=2)
    engine.gate.clear()
    first = scheduler.submit("running")
    while scheduler.stats()["running"] < 1:
        time.sleep(0.01)
    queued = [scheduler.submit("q1"), scheduler.submit("q2")]
    with pytest.raises(ServerBusyError, match=r"max_queue=2") as err:
        scheduler.submit("refused")
    assert err.value.retryable and "'llamacpp:tiny'" in str(err.value)
    engine.gate.set()
    assert ["".join(t) for t in [first, *queued]] == ["running", "q1", "q2"]


def test_queue_timeout_waits_for_room_instead_of_refusing() -> None:
    engine = SpellEngine(capacity=1, step_delay=0.005)
    scheduler = Scheduler(engine, name="spell", max_queue=1, queue_timeout=10)
    tickets = [scheduler.submit(w) for w in ["aaaa", "bbbb", "cccc", "dddd"]]
    assert ["".join(t) for t in tickets] == ["aaaa", "bbbb", "cccc", "dddd"]


def test_shutdown_fails_waiting_and_running_requests_and_refuses_new_ones() -> None:
    engine = SpellEngine(capacity=1)
    scheduler = Scheduler(engine, name="spell")
    engine.gate.clear()
    running, waiting = scheduler.submit("long"), scheduler.submit("later")
    while scheduler.stats()["running"] < 1:
        time.sleep(0.01)
    threading.Timer(0.1, engine.gate.set).start()
    scheduler.shutdown("the server is shutting down", timeout=5)
    for ticket in (running, waiting):
        with pytest.raises(ProviderUnavailableError, match="shutting down"):
            list(ticket)
    with pytest.raises(ProviderUnavailableError, match="shut down"):
        scheduler.submit("new")
    assert scheduler.stats()["closed"]


def test_bad_settings_are_refused_naming_the_value() -> None:
    with pytest.raises(ValueError, match="max_queue must be an int >= 0; got -1"):
        Scheduler(SpellEngine(), name="spell", max_queue=-1)
    with pytest.raises(ValueError, match=r"queue_timeout .* got 'soon'"):
        Scheduler(SpellEngine(), name="spell", queue_timeout="soon")  # type: ignore[arg-type]
