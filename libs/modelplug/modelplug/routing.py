"""Routing: health memory per endpoint (a circuit breaker) and the order a set tries its members.

Health memory. Every fallback set and pool in the process shares one :class:`HealthTable`
(:data:`HEALTH`), keyed by :class:`Endpoint` (provider, base URL, model, and a fingerprint of the
API key, so two keys of one cloud are two endpoints). An endpoint that fails with a
failover-worthy error (connection refused or reset, timeout, HTTP 5xx, 429: see :func:`counts`)
``threshold`` times in a row is *open*: sets skip it for ``cooldown`` seconds (or the
``Retry-After`` the provider sent), trying it only when every other member has failed. After the
cooldown it is *half-open*: the next call that reaches it is the one probe, and other callers
keep skipping it until that probe ends; success closes it, another failure opens it again for
twice the last cooldown (up to ``max_cooldown``). Any other answer (a 400, say) shows the endpoint
is up and closes it. The table is guarded by one lock held only for dictionary updates, so it is
safe from any thread and from asyncio code (nothing in it awaits).

Order. :class:`Router` puts a set's members in the order one call tries them: ``priority`` (as
given), ``round_robin`` (the starting member rotates per call), ``least_outstanding`` (fewest
requests in flight first, counted process-wide per endpoint, ties rotating), and session
affinity: calls with the same session key start at the same member (rendezvous hashing, so a
member that is down moves only its own sessions), the others following as fallbacks.

This module is framework-free and imports no SDK.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from modelplug.errors import (
    ModelPlugError,
    ProviderUnavailableError,
    RateLimitError,
    map_sdk_error,
)

C = TypeVar("C")

#: How a set orders its members for each call (see :class:`Router`).
STRATEGIES = ("priority", "round_robin", "least_outstanding")
#: The HTTP header that carries a call's session key to an HTTP backend (routers such as vLLM's
#: production stack and llm-d can route on it to the replica holding the prefix cache).
SESSION_HEADER = "x-session-id"


class Endpoint(NamedTuple):
    """What health is remembered for: one deployment of one model."""

    provider: str
    base_url: str | None
    model: str
    #: A short hash of the API key (never the key), or None without one.
    key_id: str | None = None

    def __str__(self) -> str:
        where = f" @ {self.base_url}" if self.base_url else ""
        key = f" (key #{self.key_id})" if self.key_id else ""
        return f"{self.provider}:{self.model}{where}{key}"


def key_id(secret: Any) -> str | None:
    """A fingerprint of an API key (8 hex digits of its SHA-256), or None."""
    value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
    if not isinstance(value, str) or not value:
        return None
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def backend_endpoint(backend: Any) -> Endpoint | None:
    """The endpoint of a modelplug backend (``backend.ref``, its settings), or None."""
    ref = getattr(backend, "ref", None)
    if ref is None:
        return None
    settings = getattr(backend, "settings", None) or {}
    base_url = settings.get("base_url") or getattr(backend, "base_url", None)
    if not isinstance(base_url, str):
        base_url = getattr(getattr(backend, "spec", None), "default_base_url", None)
    return Endpoint(ref.provider, base_url if isinstance(base_url, str) else None, ref.model_id,
                    key_id(settings.get("api_key")))


def counts(exc: BaseException) -> bool:
    """Whether ``exc`` says the endpoint is unwell (rather than the request being wrong):
    unreachable, timed out, HTTP 5xx, a malformed answer, a full queue, or HTTP 429."""
    if not isinstance(exc, ModelPlugError):
        exc = map_sdk_error(exc)
    return isinstance(exc, ProviderUnavailableError | RateLimitError)


@dataclass
class EndpointHealth:
    """One row of the health table."""

    endpoint: Endpoint
    #: "closed" (takes traffic), "open" (skipped until ``until``), "half_open" (one probe).
    state: str = "closed"
    #: Failover-worthy failures in a row.
    failures: int = 0
    #: time.monotonic() when an open endpoint may be probed.
    until: float = 0.0
    #: The cooldown that opened it last (doubles while probes fail).
    cooldown: float = 0.0
    probing: bool = False
    in_flight: int = 0
    successes: int = 0
    total_failures: int = 0
    last_error: str | None = None


class HealthTable:
    """Health of every endpoint the process has routed to (see the module docstring).

    ``threshold``: failover-worthy failures in a row that open an endpoint (default 1: one
    timeout is already a long wait). ``cooldown``: seconds an open endpoint is skipped when the
    provider sent no ``Retry-After`` (default 10). ``max_cooldown``: the cap of cooldowns, the
    doubling after failed probes and ``Retry-After`` alike (default 300).
    """

    def __init__(self, threshold: int = 1, cooldown: float = 10.0,
                 max_cooldown: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self._lock = threading.Lock()
        self._rows: dict[Endpoint, EndpointHealth] = {}
        self.clock = clock
        self.configure(threshold=threshold, cooldown=cooldown, max_cooldown=max_cooldown)

    def configure(self, *, threshold: int | None = None, cooldown: float | None = None,
                  max_cooldown: float | None = None) -> None:
        """Change the settings; rows already open keep their current cooldown."""
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
                raise ValueError(f"threshold must be an integer >= 1; got {threshold!r}.")
            self.threshold = threshold
        for name, value in (("cooldown", cooldown), ("max_cooldown", max_cooldown)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"{name} must be a number of seconds >= 0; got {value!r}.")
                setattr(self, name, float(value))

    def clear(self) -> None:
        """Forget every endpoint (tests; after fixing a deployment)."""
        with self._lock:
            self._rows.clear()

    def _row(self, endpoint: Endpoint) -> EndpointHealth:
        row = self._rows.get(endpoint)
        if row is None:
            row = self._rows[endpoint] = EndpointHealth(endpoint)
        return row

    # -- the calls' side --------------------------------------------------------------------------

    def admit(self, endpoint: Endpoint) -> bool:
        """Whether a call may go to ``endpoint`` now. An open endpoint whose cooldown has passed
        turns half-open and admits this caller as its one probe; it admits no one else until the
        probe ends (:meth:`finish`)."""
        with self._lock:
            row = self._rows.get(endpoint)
            if row is None or row.state == "closed":
                return True
            if row.probing or self.clock() < row.until:
                return False
            row.state, row.probing = "half_open", True
            return True

    def start(self, endpoint: Endpoint) -> None:
        """A request to ``endpoint`` is in flight."""
        with self._lock:
            self._row(endpoint).in_flight += 1

    def finish(self, endpoint: Endpoint, exc: BaseException | None = None) -> None:
        """A request to ``endpoint`` ended: answered (``exc`` None), failed, or was cancelled
        (a ``BaseException`` that is no ``Exception``: no verdict, a probe may run again)."""
        unwell = exc is not None and isinstance(exc, Exception) and counts(exc)
        retry_after = getattr(map_sdk_error(exc) if exc is not None else None, "retry_after",
                              None)
        with self._lock:
            row = self._row(endpoint)
            row.in_flight = max(0, row.in_flight - 1)
            if exc is not None and not isinstance(exc, Exception):
                row.probing = False
                return
            if not unwell:
                if exc is None:
                    row.successes += 1
                row.state, row.failures, row.probing, row.cooldown = "closed", 0, False, 0.0
                return
            row.failures += 1
            row.total_failures += 1
            row.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if row.state == "half_open" or row.failures >= self.threshold:
                if isinstance(retry_after, int | float):
                    cooldown = float(retry_after)
                elif row.state == "half_open":
                    cooldown = max(self.cooldown, row.cooldown * 2)
                else:
                    cooldown = self.cooldown
                row.cooldown = min(cooldown, self.max_cooldown)
                row.state, row.until, row.probing = "open", self.clock() + row.cooldown, False

    def in_flight(self, endpoint: Endpoint) -> int:
        row = self._rows.get(endpoint)
        return row.in_flight if row is not None else 0

    def state(self, endpoint: Endpoint) -> str:
        """"closed", "open" or "half_open" (an open endpoint whose cooldown has passed reads
        "half_open": its next call is the probe)."""
        with self._lock:
            row = self._rows.get(endpoint)
            if row is None:
                return "closed"
            if row.state == "open" and self.clock() >= row.until:
                return "half_open"
            return row.state

    def table(self) -> list[dict[str, Any]]:
        """Every endpoint seen, as plain dicts for logs and the CLI: endpoint, state, failures in
        a row, seconds until an open one may be probed, in flight, successes, failures, last
        error."""
        now = self.clock()
        with self._lock:
            rows = list(self._rows.values())
            return [{"endpoint": str(r.endpoint), "state": (
                        "half_open" if r.state == "open" and now >= r.until else r.state),
                     "failures_in_a_row": r.failures,
                     "retry_in_s": round(max(0.0, r.until - now), 3) if r.state == "open"
                     else 0.0,
                     "in_flight": r.in_flight, "successes": r.successes,
                     "failures": r.total_failures, "last_error": r.last_error}
                    for r in rows]


#: The process-wide table every fallback set and pool uses unless given another.
HEALTH = HealthTable()


def health_table() -> list[dict[str, Any]]:
    """The process-wide health table (see :meth:`HealthTable.table`)."""
    return HEALTH.table()


def configure_health(*, threshold: int | None = None, cooldown: float | None = None,
                     max_cooldown: float | None = None) -> None:
    """Settings of the process-wide health memory (see :class:`HealthTable`)."""
    HEALTH.configure(threshold=threshold, cooldown=cooldown, max_cooldown=max_cooldown)


def check(backend: Any, health: HealthTable | None = None) -> BaseException | None:
    """Ask ``backend`` for a one-token answer now and record how it went in ``health`` (the
    process-wide table by default), as a call of a fallback set would: the error, or None for
    an answer. ``modelplug health`` runs this for each model it is given."""
    from modelplug.types import ChatRequest

    table = health if health is not None else HEALTH
    endpoint = backend_endpoint(backend)
    if endpoint is None:
        raise TypeError(f"{backend!r} is no modelplug backend (it has no model reference).")
    table.start(endpoint)
    try:
        backend.chat(ChatRequest([{"role": "user", "content": "ping"}], max_tokens=1))
    except Exception as exc:
        table.finish(endpoint, exc)
        return exc
    table.finish(endpoint, None)
    return None


def _score(session: str, name: str) -> bytes:
    return hashlib.blake2b(f"{session}\x00{name}".encode(), digest_size=8).digest()


def session_key(messages: Sequence[dict[str, Any]]) -> str | None:
    """A stable key for a conversation: a hash of its system messages and first user message,
    which every later turn of the same conversation repeats. None without a user message."""
    head = []
    for message in messages:
        head.append(f"{message.get('role')}\x00{message.get('content')!s}")
        if message.get("role") == "user":
            return hashlib.blake2b("\x01".join(head).encode(), digest_size=12).hexdigest()
    return None


class Router:
    """The order one call tries a set's members in (see the module docstring).

    ``strategy``: one of :data:`STRATEGIES`. ``health``: the table whose in-flight counts
    ``least_outstanding`` reads.
    """

    def __init__(self, strategy: str = "priority", health: HealthTable | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}; got "
                             f"{strategy!r}.")
        self.strategy = strategy
        self.health = health if health is not None else HEALTH
        self._turn = itertools.count()

    def order(self, members: Sequence[C], *, names: Sequence[str],
              endpoints: Sequence[Endpoint | None], session: str | None = None) -> list[C]:
        """``members`` in the order this call tries them."""
        indices = list(range(len(members)))
        if session is not None:
            # Rendezvous: each session's own ranking of the members by a score of (session,
            # member), stable across calls; a member left out (skipped for a capability) does
            # not reorder the others. A member is known by its endpoint, else its name, with
            # a count for repeats.
            seen: dict[str, int] = {}
            idents = []
            for i in indices:
                ident = str(endpoints[i]) if endpoints[i] is not None else names[i]
                seen[ident] = seen.get(ident, 0) + 1
                idents.append(f"{ident}#{seen[ident]}")
            indices.sort(key=lambda i: _score(session, idents[i]), reverse=True)
        elif self.strategy != "priority" and indices:
            start = next(self._turn) % len(indices)
            indices = indices[start:] + indices[:start]
            if self.strategy == "least_outstanding":
                load = [self.health.in_flight(e) if e is not None else 0 for e in endpoints]
                indices.sort(key=lambda i: load[i])  # stable: ties keep the rotation
        return [members[i] for i in indices]


__all__ = [
    "HEALTH",
    "SESSION_HEADER",
    "STRATEGIES",
    "Endpoint",
    "EndpointHealth",
    "HealthTable",
    "Router",
    "backend_endpoint",
    "check",
    "configure_health",
    "counts",
    "health_table",
    "key_id",
    "session_key",
]
