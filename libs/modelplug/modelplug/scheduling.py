"""Many callers, one loaded in-process model: a scheduler that decodes their requests together.

Chains, agents, query engines and servers call a model concurrently, from threads and from
event loops. Each loaded model that can batch gets one :class:`Scheduler`: a worker thread that
owns the model's runtime (a llama.cpp context, a transformers batch) and runs it step by step.
A request is submitted from any thread or loop and gets a :class:`Ticket`, its own channel back:
chunks arrive as they are generated. New requests join the running batch at the next step, and
finished, failed or cancelled ones leave it (continuous batching).

The runtime-specific part is an :class:`Engine` (``backends/llamacpp_engine.py`` for llama.cpp).
The scheduler only admits, steps and retires; it knows nothing of tokens.

Back-pressure: at most ``max_queue`` requests wait for a place in the batch. One more is refused
with :class:`~modelplug.errors.ServerBusyError` (retryable, so a fallback set moves on), unless
``queue_timeout`` allows it to wait that many seconds for room.

Cancellation: a caller that stops reading (``break``, ``close()``, a cancelled task, a closed HTTP
connection) cancels its ticket, and the engine frees the slot before its next step.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from modelplug.errors import ProviderUnavailableError, ServerBusyError

#: Requests that may wait for a place in the batch before more are refused.
DEFAULT_MAX_QUEUE = 256


class Ticket:
    """One request's way back to its caller: its chunks as they come, then its end or its error.

    The engine's thread produces (:meth:`put`, :meth:`finish`, :meth:`fail`); the caller consumes,
    from a thread (``for chunk in ticket``) or an event loop (``async for chunk in ticket``).
    A consumer that stops before the end cancels the ticket.
    """

    def __init__(self, job: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        #: What the engine needs to run this request (engine-specific).
        self.job = job
        #: Engine-owned state while the request runs (its sequence, its slot).
        self.state: Any = None
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._loop = loop
        self._ready = asyncio.Event() if loop is not None else None
        self._scheduler: Scheduler | None = None
        self.cancelled = False
        self.ended = False

    # -- the engine's side ---------------------------------------------------------------------

    def put(self, item: Any) -> None:
        self._push(item)

    def finish(self, item: Any = None) -> None:
        """The last item (if any), then the end of the stream."""
        if self.ended:
            return
        self.ended = True
        if item is not None:
            self._push(item)
        self._push(_END)

    def fail(self, exc: BaseException) -> None:
        if self.ended:
            return
        self.ended = True
        self._push(_Raised(exc))

    def _push(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the caller's loop has closed: no one reads
                self._loop.call_soon_threadsafe(self._ready.set)  # type: ignore[union-attr]

    # -- the caller's side ---------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop this request: it leaves the batch (or the queue) at the engine's next step."""
        if self.ended or self.cancelled:
            return
        self.cancelled = True
        if self._scheduler is not None:
            self._scheduler.wake()

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                with self._cond:
                    while not self._items:
                        self._cond.wait()
                    item = self._items.popleft()
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.exc
                yield item
        finally:
            self.cancel()  # a consumer that stopped early; a no-op once ended

    async def __aiter__(self) -> AsyncIterator[Any]:
        assert self._ready is not None, "submit(..., loop=...) for async consumers"
        try:
            while True:
                with self._cond:
                    item = self._items.popleft() if self._items else _EMPTY
                    if item is _EMPTY:
                        self._ready.clear()
                if item is _EMPTY:
                    await self._ready.wait()
                    continue
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.exc
                yield item
        finally:
            self.cancel()


class Engine(Protocol):
    """A runtime that advances several requests at once (one per :class:`Ticket`)."""

    #: Most requests decoded together.
    capacity: int

    def admit(self, ticket: Ticket, running: list[Ticket]) -> bool:
        """Take ``ticket`` into the batch now (set up its sequence), or return False to let it
        wait until ``running`` shrinks. Raising fails this request alone."""

    def step(self, running: list[Ticket]) -> list[Ticket]:
        """One forward pass over every running request; puts each one's new chunks on its ticket
        and returns those that are finished (their ticket already finished or failed)."""

    def release(self, ticket: Ticket) -> None:
        """Free a request's slot (finished, failed or cancelled)."""

    def close(self) -> None:
        """Free the runtime's resources (called on the worker thread when it stops)."""


class Scheduler:
    """One loaded model's batcher: a worker thread that admits, steps and retires requests.

    Thread- and asyncio-safe: :meth:`submit` may be called from anywhere. The worker starts on the
    first request and sleeps while nothing runs.
    """

    def __init__(self, engine: Engine, *, name: str, max_queue: int = DEFAULT_MAX_QUEUE,
                 queue_timeout: float = 0.0) -> None:
        if not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue must be an int >= 0; got {max_queue!r}.")
        if not isinstance(queue_timeout, (int, float)) or queue_timeout < 0:
            raise ValueError(f"queue_timeout must be a number of seconds >= 0; got "
                             f"{queue_timeout!r}.")
        self.engine, self.name = engine, name
        self.max_queue, self.queue_timeout = max_queue, float(queue_timeout)
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._running: list[Ticket] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed: str | None = None
        self._retiring = False
        self.completed = 0
        #: The most requests that ran at once (one batch) since the model was loaded.
        self.peak_running = 0
        _schedulers.add(self)

    # -- callers -------------------------------------------------------------------------------

    def submit(self, job: Any, loop: asyncio.AbstractEventLoop | None = None) -> Ticket:
        """Queue one request; its chunks come back on the returned ticket.

        ``loop``: the event loop of an async consumer (``async for`` over the ticket).
        """
        ticket = Ticket(job, loop)
        ticket._scheduler = self
        with self._cond:
            deadline = time.monotonic() + self.queue_timeout
            while self._closed is None and len(self._waiting) >= self.max_queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerBusyError(
                        f"{len(self._waiting)} requests are already waiting for {self.name} "
                        f"(max_queue={self.max_queue}, {len(self._running)} running). Retry "
                        "later, or raise max_queue= / set queue_timeout= (seconds to wait for "
                        "room) when loading the model.")
                self._cond.wait(left)
            if self._closed is not None or self._retiring:
                raise ProviderUnavailableError(
                    f"{self.name} is shut down ({self._closed or 'the model was unloaded'}); "
                    "load it again (a new model object) to use it.")
            self._waiting.append(ticket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"modelplug-scheduler {self.name}")
                self._thread.start()
            self._cond.notify_all()
        return ticket

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        """What the batch holds now: for logs, health endpoints and tests."""
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._waiting),
                    "capacity": self.engine.capacity, "max_queue": self.max_queue,
                    "completed": self.completed, "peak_running": self.peak_running,
                    "closed": self._closed is not None}

    def retire(self) -> None:
        """Refuse new requests; the worker stops once those already queued have finished."""
        with self._cond:
            self._retiring = True
            self._cond.notify_all()

    def shutdown(self, reason: str = "the process is stopping", timeout: float = 5.0) -> None:
        """Fail every waiting and running request with ProviderUnavailableError, stop the worker
        within ``timeout`` seconds (at its next step) and refuse new requests."""
        with self._cond:
            if self._closed is None:
                self._closed = reason
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while True:
                        self._drop_cancelled_waiting()
                        if self._closed is not None or self._running or self._waiting:
                            break
                        if self._retiring:  # unloaded and idle: free the runtime
                            self._closed = "the model was unloaded"
                            break
                        self._cond.wait()
                    if self._closed is not None:
                        break
                self._retire([t for t in self._running if t.cancelled])
                self._admit()
                if self._running:
                    try:
                        done = self.engine.step(self._running)
                    except Exception as exc:  # the batch itself broke: no request can go on
                        done = list(self._running)
                        for ticket in done:
                            ticket.fail(exc)
                    self._retire(done)
        finally:
            self._stop_all()

    def _drop_cancelled_waiting(self) -> None:
        kept = [t for t in self._waiting if not t.cancelled]
        if len(kept) != len(self._waiting):
            for t in self._waiting:
                if t.cancelled:
                    t.finish()
            self._waiting = collections.deque(kept)
            self._cond.notify_all()  # room in the queue

    def _admit(self) -> None:
        while len(self._running) < self.engine.capacity:
            with self._cond:
                if not self._waiting:
                    return
                ticket = self._waiting[0]
                if ticket.cancelled:
                    self._waiting.popleft()
                    ticket.finish()
                    continue
            try:
                admitted = self.engine.admit(ticket, self._running)
            except Exception as exc:  # this request cannot run (its prompt, its grammar)
                with self._cond:
                    self._waiting.popleft()
                    self._cond.notify_all()
                self.engine.release(ticket)
                ticket.fail(exc)
                continue
            if not admitted:
                return
            with self._cond:
                self._waiting.popleft()
                self._running.append(ticket)
                self.peak_running = max(self.peak_running, len(self._running))
                self._cond.notify_all()

    def _retire(self, tickets: list[Ticket]) -> None:
        if not tickets:
            return
        for ticket in tickets:
            self.engine.release(ticket)
            ticket.finish()  # a no-op unless it was cancelled
        gone = set(map(id, tickets))
        with self._cond:
            self._running = [t for t in self._running if id(t) not in gone]
            self.completed += len(tickets)
            self._cond.notify_all()

    def _stop_all(self) -> None:
        with self._cond:
            reason = self._closed or "its worker stopped"
            tickets = list(self._waiting) + self._running
            self._waiting.clear()
            self._running = []
            self._cond.notify_all()
        error = ProviderUnavailableError(f"{self.name} is shut down ({reason}).")
        for ticket in tickets:
            with contextlib.suppress(Exception):
                self.engine.release(ticket)
            ticket.fail(error)
        with contextlib.suppress(Exception):
            self.engine.close()


def shutdown_all(reason: str = "the process is stopping", timeout: float = 5.0) -> None:
    """Stop every scheduler in the process (a server's shutdown, interpreter exit)."""
    for scheduler in list(_schedulers):
        scheduler.shutdown(reason, timeout)


_schedulers: weakref.WeakSet[Scheduler] = weakref.WeakSet()
atexit.register(shutdown_all, "the interpreter is exiting", 2.0)

_END = object()
_EMPTY = object()


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


__all__ = ["DEFAULT_MAX_QUEUE", "Engine", "Scheduler", "Ticket", "shutdown_all"]
