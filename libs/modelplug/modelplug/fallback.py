"""The failover policy both adapters share (LangChain's FallbackChatModel, LlamaIndex's FallbackLLM).

An ordered list of candidates is tried in turn. The first that answers wins; a candidate that
raises an error the policy deems transient hands the same request (the whole conversation) to the
next one. A candidate whose profile says it cannot serve the request (tools, images, context
length) is skipped without being called. Permanent errors (a bad request, a bad key, an unknown
model) surface at once rather than being masked by a later candidate. Streams fail over only
before their first chunk: once text has reached the caller, an error propagates instead of
replaying the answer from another model. When every candidate fails or is skipped,
:class:`~modelplug.errors.FallbackExhaustedError` carries every error, the last as its cause.

This module is framework-free and imports no SDK: errors are judged by their ``retryable``
flag, and foreign ones by :func:`~modelplug.errors.map_sdk_error` (class names and HTTP status), so
checking an error never imports openai, anthropic, ollama or httpx.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from modelplug.errors import (
    TRANSIENT_ERROR_NAMES,
    CircuitOpenError,
    FallbackExhaustedError,
    UnsupportedCapabilityError,
    is_retryable,
    map_sdk_error,
    status_code,
)
from modelplug.profile import Profile
from modelplug.routing import HEALTH, Endpoint, HealthTable, Router
from modelplug.tracing import fallback_trace, traced_run
from modelplug.types import ChatRequest

logger = logging.getLogger("modelplug.fallback")

T = TypeVar("T")
R = TypeVar("R")
C = TypeVar("C")

#: What fails over: exception classes (fail over on instances of them, or on errors that
#: :func:`~modelplug.errors.map_sdk_error` maps to one), a predicate, or None for
#: :func:`is_retryable`.
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _predicate(retry_on: RetryOn | None) -> Callable[[BaseException], bool]:
    if retry_on is None:
        return is_retryable
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        retry_on = (retry_on,)
    if isinstance(retry_on, tuple):
        bad = [t for t in retry_on if not (isinstance(t, type) and issubclass(t, BaseException))]
        if bad:
            raise TypeError(
                f"retry_on must hold exception classes; got {bad!r}. Pass e.g. "
                "retry_on=(ConnectionError, TimeoutError), or a function exc -> bool."
            )
        classes = retry_on
        # A third-party model raises its SDK's own errors (openai.APIConnectionError is no
        # ConnectionError): they match as the typed error map_sdk_error makes of them too.
        return lambda exc: isinstance(exc, classes) or isinstance(map_sdk_error(exc), classes)
    if callable(retry_on):
        return retry_on
    raise TypeError(
        f"retry_on must be an exception class, a tuple of them, or a function exc -> bool; got "
        f"{retry_on!r}. Leave it unset for the default (connection errors, timeouts, 429, 5xx)."
    )


# -- what a request needs ----------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token), for skipping by context length."""
    return math.ceil(len(text) / 4)


#: What one image part counts for in a request's token estimate, whatever its size: OpenAI's
#: figure for a 1024x1024 image at high detail (85 + 4 tiles x 170). Providers resize images and
#: charge a bounded amount per image (Gemini 258, OpenAI 85-1105, Anthropic up to about 1,600),
#: never by the size of the base64 text. The estimate only decides whether a candidate is skipped
#: for its context window, and skipping one that would fit is worse than trying one that does
#: not (its context-overflow error fails over), so the figure sits low in that range.
IMAGE_TOKENS = 765


def _without_data_urls(value: Any) -> Any:
    """``value`` (messages, as JSON-like data) with every data URL (inline image, file) blanked."""
    if isinstance(value, str):
        return "" if value.startswith("data:") else value
    if isinstance(value, Mapping):
        return {k: _without_data_urls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_data_urls(v) for v in value]
    return value


def _image_parts(messages: Iterable[Mapping[str, Any]]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, Mapping) and p.get("type") == "image_url")


def _field(profile: Profile | Mapping[str, Any] | None, name: str) -> Any:
    if profile is None:
        return None
    if isinstance(profile, Mapping):
        return profile.get(name)
    return getattr(profile, name, None)


@dataclass(frozen=True)
class Needs:
    """What a request needs from a model, compared with each candidate's profile.

    A candidate is skipped only when its profile says it lacks a need (``False``, or a context
    window smaller than the estimate); an unknown capability (``None``) is tried.
    """

    tools: bool = False
    images: bool = False
    #: Estimated prompt size in tokens (see :func:`estimate_tokens`).
    input_tokens: int | None = None

    @classmethod
    def of_request(cls, request: ChatRequest) -> Needs:
        """The needs of ``request``: its text at :func:`estimate_tokens`, each image part at
        :data:`IMAGE_TOKENS` (the base64 of a data URL is no measure of an image's tokens)."""
        import json

        text = json.dumps(_without_data_urls(request.messages), default=str)
        if request.tools:
            text += json.dumps(request.tools, default=str)
        tokens = estimate_tokens(text) + IMAGE_TOKENS * _image_parts(request.messages)
        return cls(tools=bool(request.tools) and request.tool_choice != "none",
                   images=request.has_images, input_tokens=tokens)

    @staticmethod
    def may_skip(profile: Profile | Mapping[str, Any] | None) -> bool:
        """Whether any request could be unmet by this profile (:meth:`unmet`): it lacks tool
        calling or image inputs, or states a context window. A set none of whose candidates
        may be skipped need not work out a request's needs."""
        return (_field(profile, "tool_calling") is False
                or _field(profile, "image_inputs") is False
                or isinstance(_field(profile, "max_input_tokens"), int))

    def unmet(self, profile: Profile | Mapping[str, Any] | None) -> str | None:
        """Why a model with this profile cannot serve the request, or None if it may."""
        if self.tools and _field(profile, "tool_calling") is False:
            return "it does not support tool calling and the request has tools"
        if self.images and _field(profile, "image_inputs") is False:
            return "it does not take image inputs and the request has images"
        window = _field(profile, "max_input_tokens")
        if self.input_tokens and isinstance(window, int) and self.input_tokens > window:
            return (f"the request is about {self.input_tokens} tokens, over its context window "
                    f"of {window}")
        return None


# -- what a set of candidates can do -----------------------------------------------------------

#: Capabilities a candidate is skipped for lacking (see :meth:`Needs.unmet`).
SKIPPED_FOR = ("tool_calling", "image_inputs")
#: Limits a request is sized by.
LIMITS = ("max_input_tokens", "max_output_tokens")


def combine_profiles(profiles: Sequence[Profile | Mapping[str, Any] | None],
                     capabilities: Iterable[str]) -> dict[str, Any]:
    """What a fallback set can be said to have, from its candidates' profiles.

    One rule, used by both adapters (FallbackChatModel.profile, FallbackLLM.metadata):

    - a capability the policy skips candidates for lacking (:data:`SKIPPED_FOR`: tool calling,
      image inputs) is True when *any* candidate has it, since a request that needs it goes to
      the candidates that do; False when every candidate lacks it;
    - any other capability of ``capabilities`` is True only when *every* candidate has it
      (nothing is skipped for it, so whichever answers must have it); False when any lacks it;
    - the :data:`LIMITS` are the smallest, when every candidate states one: a request sized to
      them fits whichever candidate answers, so every candidate stays a fallback;
    - anything else is unknown and left out.
    """
    out: dict[str, Any] = {}
    for name in capabilities:
        values = [_field(p, name) for p in profiles]
        some = any(v is True for v in values)
        every = bool(values) and all(v is True for v in values)
        none = bool(values) and all(v is False for v in values)
        lacking = any(v is False for v in values)
        if name in SKIPPED_FOR and (some or none):
            out[name] = some
        elif name not in SKIPPED_FOR and (every or lacking):
            out[name] = every
    for name in LIMITS:
        values = [_field(p, name) for p in profiles]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[name] = min(values)
    return out


# -- settings shared by a set --------------------------------------------------------------------


def _refuses(model: Any, name: str) -> bool:
    """Whether ``model`` (a model string or catalog member) belongs to a provider row that
    refuses setting ``name`` by design: a network setting (``timeout``, ``base_url``...) on an
    in-process row, a setting only another provider takes. A row that merely does not know ``name`` (a typo) does not refuse
    it: that still raises when the candidate is built. Unparseable: False (the build says why)."""
    from modelplug.catalog import CatalogModel
    from modelplug.registry import NETWORK_KWARGS, SINGLE_PROVIDER_SETTINGS, get_provider
    from modelplug.spec import parse_model_string

    try:
        provider = (model.info.provider if isinstance(model, CatalogModel)
                    else parse_model_string(model).provider)
        spec = get_provider(provider)
    except Exception:
        return False
    if name in spec.kwargs:
        return False
    return (name in spec.refused or name in SINGLE_PROVIDER_SETTINGS
            or (spec.kind == "in-process" and name in NETWORK_KWARGS))


def candidate_settings(models: Sequence[Any], shared: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The settings each candidate of a set is built with, from the set's ``shared`` ones.

    A shared setting applies to the candidates that take it: each model string or catalog member
    gets those its provider does not refuse (``FallbackChatModel(["vllm:...",
    "llamacpp:smollm2"], max_retries=0)``: the in-process model ignores ``max_retries``). A
    setting every such candidate refuses is a mistake, and the first one's refusal is raised
    when it is built (it gets the setting). Instances (None here) are configured by the caller.
    """
    named = [i for i, m in enumerate(models) if isinstance(m, str) or hasattr(m, "info")]
    refused = {k: [_refuses(models[i], k) for i in named] for k in shared}
    out: list[dict[str, Any]] = [{} for _ in models]
    for n, i in enumerate(named):
        out[i] = {k: v for k, v in shared.items()
                  if not refused[k][n] or (all(refused[k]) and n == 0)}
    return out


# -- candidates and the runners --------------------------------------------------------------


@dataclass
class Candidate(Generic[T]):
    """One model of a fallback set: a display name, what to call, its profile, and the endpoint
    its health is remembered for (None: not tracked, e.g. a nested set)."""

    name: str
    target: T
    profile: Profile | Mapping[str, Any] | None = None
    endpoint: Endpoint | None = None
    #: Whether it answers a conversation ending in an assistant message by continuing that
    #: text (an assistant prefill), so it may resume a stream cut after text was sent.
    continues: bool = False


@dataclass(frozen=True)
class Continuation(Generic[T, C]):
    """How the next candidates take over a stream cut after its first items: ``start`` one
    (the adapter's request, from what was already sent), and whether it must continue text
    already sent (``prefill``): then only candidates that can (``Candidate.continues``) are
    tried, the others skipped; with nothing but held items sent it starts afresh anywhere."""

    start: Callable[[T], Any]
    prefill: bool = False


@dataclass(frozen=True)
class Attempt:
    """One candidate's try within a call: who, how it ended (``error`` is the error's class
    name, None for the answer), its message, and how long it took (seconds; 0 for a skip)."""

    candidate: str
    error: str | None
    message: str
    latency_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "error": self.error, "message": self.message,
                "latency_s": round(self.latency_s, 4)}


@dataclass
class Outcome(Generic[R]):
    """The answer of a fallback run, which candidate gave it, the failures before it, and every
    attempt (skips included) in order."""

    value: R
    candidate: Candidate[Any]
    failures: list[tuple[str, BaseException]] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)


class _Call:
    """The bookkeeping of one call over a set: failures, attempts, health and load."""

    def __init__(self, policy: FallbackPolicy) -> None:
        self.policy = policy
        self.failures: list[tuple[str, BaseException]] = []
        self.attempts: list[Attempt] = []
        self._started = 0.0
        self.trace = fallback_trace()  # OpenTelemetry spans of the run (modelplug.tracing)

    def skip(self, candidate: Candidate[Any], error: BaseException, *,
             failure: bool = True) -> None:
        """A candidate not called: a failure of the set's (``failure``), or only an attempt
        (a cooling-down one, which may yet be tried as a last resort)."""
        if failure:
            self.failures.append((candidate.name, error))
        self.attempts.append(Attempt(candidate.name, type(error).__name__, str(error), 0.0))
        self.trace.skip(candidate.name, error)

    def begin(self, candidate: Candidate[Any]) -> None:
        self._started = time.perf_counter()
        self.trace.begin(candidate.name)
        if self.policy.health is not None and candidate.endpoint is not None:
            self.policy.health.start(candidate.endpoint)

    def end(self, candidate: Candidate[Any], exc: BaseException | None, *,
            continuing: bool = False) -> None:
        """Record how the candidate's try ended (health, load, attempts); a failure that does
        not fail over is re-raised, unless the candidate was ``continuing`` a cut stream (the
        caller holds part of an answer: the next candidate may yet go on with it)."""
        if self.policy.health is not None and candidate.endpoint is not None:
            self.policy.health.finish(candidate.endpoint, exc)
        self.trace.end(exc)
        latency = time.perf_counter() - self._started
        if exc is None:
            self.attempts.append(Attempt(candidate.name, None, "", latency))
            return
        if isinstance(exc, Exception):
            self.attempts.append(Attempt(candidate.name, type(exc).__name__, str(exc),
                                         latency))
            if continuing:
                self.failures.append((candidate.name, exc))
                return
            self.policy._failed(candidate, exc, self.failures)

    def selected(self, candidate: Candidate[Any]) -> Outcome[None]:
        """A stream's candidate sent its first item (or ended): the outcome so far, its attempt
        timed to that first item. Its health is recorded when the stream ends."""
        self.trace.selected()
        self.attempts.append(Attempt(candidate.name, None, "",
                                     time.perf_counter() - self._started))
        return Outcome(None, candidate, self.failures, self.attempts)

    def cut(self, candidate: Candidate[Any], exc: BaseException) -> None:
        """A stream that had sent items failed and is resumed on the next candidate."""
        logger.warning("Candidate %r failed mid-stream (%s: %s); continuing on the next.",
                       candidate.name, type(exc).__name__, exc)
        self.trace.end(exc)
        self.failures.append((candidate.name, exc))
        self.attempts.append(Attempt(candidate.name, type(exc).__name__, str(exc),
                                     time.perf_counter() - self._started))

    def cannot_continue(self, candidate: Candidate[Any]) -> None:
        """A candidate skipped for a cut stream: it cannot continue the text already sent."""
        self.skip(candidate, UnsupportedCapabilityError(
            f"Candidate {candidate.name!r} skipped: it cannot continue a partial answer (its "
            "provider has no assistant prefill; see ProviderSpec.prefill)."))

    def uncontinued(self, cut: BaseException) -> BaseException:
        """The error that cut a stream no candidate went on with, every try since noted on it
        (the adapter hands the partial answer over with it)."""
        tried = self.failures[self.failures.index(next(f for f in self.failures
                                                        if f[1] is cut)) + 1:]
        if tried and hasattr(cut, "add_note"):
            cut.add_note("No candidate continued the stream: " + "; ".join(
                f"{name} ({type(e).__name__}: {e})" for name, e in tried))
        return cut

    def outcome(self, value: Any, candidate: Candidate[Any]) -> Outcome[Any]:
        return Outcome(value, candidate, self.failures, self.attempts)

    def exhausted(self) -> FallbackExhaustedError:
        return self.policy._exhausted(self.failures)


class FallbackPolicy:
    """Runs a call over candidates, failing over on the errors ``retry_on`` admits.

    ``retry_on``: exception classes, a predicate ``exc -> bool``, or None for
    :func:`is_retryable` (connection errors, timeouts, 429 and 5xx; not 400/401/404 nor
    validation errors). Classes match an error or the typed error
    :func:`~modelplug.errors.map_sdk_error` makes of it, so ``ConnectionError`` covers an SDK's
    own connection error (``openai.APIConnectionError``) raised by a third-party model.

    ``strategy``: the order candidates are tried in per call (:data:`modelplug.routing.STRATEGIES`:
    ``"priority"``, the given order; ``"round_robin"``; ``"least_outstanding"``); a call's
    ``session`` key pins it to one candidate first (affinity). ``health``: the
    :class:`~modelplug.routing.HealthTable` remembering failing endpoints (default: the
    process-wide one), or None for no memory: an open endpoint is tried only after every other
    candidate has failed.
    """

    def __init__(self, retry_on: RetryOn | None = None, *, strategy: str = "priority",
                 health: HealthTable | bool | None = True) -> None:
        self.retry_on = retry_on
        self._fails_over = _predicate(retry_on)
        if health is True:
            health = HEALTH
        if health is not None and health is not False and not isinstance(health, HealthTable):
            raise TypeError(f"health must be True (the process-wide table), False (no health "
                            f"memory) or a modelplug.routing.HealthTable; got {health!r}.")
        self.health: HealthTable | None = health or None
        self.router = Router(strategy, self.health)

    @property
    def strategy(self) -> str:
        return self.router.strategy

    def fails_over(self, exc: BaseException) -> bool:
        """Whether ``exc`` hands the request to the next candidate."""
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit, cancellation
            return False
        return bool(self._fails_over(exc))

    # -- shared steps ---------------------------------------------------------------------------

    def _tries(self, candidates: Iterable[Candidate[T]], needs: Needs | None, call: _Call,
               session: str | None) -> Iterator[Candidate[T]]:
        """The candidates this call tries, in order: those whose profile can serve the request,
        ordered by the strategy (or the session), healthy ones first; an open one (health
        memory) only after every other has failed, as a last resort."""
        eligible = []
        for candidate in candidates:
            reason = needs.unmet(candidate.profile) if needs is not None else None
            if reason is not None:
                error = UnsupportedCapabilityError(
                    f"Candidate {candidate.name!r} skipped: {reason}.")
                logger.info("%s", error)
                call.skip(candidate, error)
                continue
            eligible.append(candidate)
        ordered = self.router.order(eligible, names=[c.name for c in eligible],
                                    endpoints=[c.endpoint for c in eligible], session=session)
        deferred = []
        for candidate in ordered:
            if self.health is None or candidate.endpoint is None or self.health.admit(
                    candidate.endpoint):
                yield candidate
            else:
                deferred.append(candidate)
                call.skip(candidate, CircuitOpenError(
                    f"Candidate {candidate.name!r} skipped: its endpoint failed recently and "
                    "is cooling down (modelplug.routing.health_table() shows when it is "
                    "probed again)."), failure=False)
        for candidate in deferred:
            logger.info("Every other candidate failed; trying %r although it is cooling down.",
                        candidate.name)
            yield candidate

    def _failed(self, candidate: Candidate[Any], exc: BaseException,
                failures: list[tuple[str, BaseException]]) -> None:
        """Record a failure that fails over, or re-raise one that does not."""
        if not self.fails_over(exc):
            if failures and hasattr(exc, "add_note"):
                exc.add_note("Before this, the fallback set tried: " + "; ".join(
                    f"{name} ({type(e).__name__}: {e})" for name, e in failures))
            raise exc
        logger.warning("Candidate %r failed (%s: %s); failing over.", candidate.name,
                       type(exc).__name__, exc)
        failures.append((candidate.name, exc))

    @staticmethod
    def _exhausted(failures: list[tuple[str, BaseException]]) -> FallbackExhaustedError:
        error = FallbackExhaustedError(failures)
        error.__cause__ = failures[-1][1] if failures else None
        return error

    # -- sync -------------------------------------------------------------------------------

    @traced_run
    def run(self, candidates: Iterable[Candidate[T]], call: Callable[[T], R], *,
            needs: Needs | None = None, session: str | None = None) -> Outcome[R]:
        """``call(candidate.target)`` on each eligible candidate until one returns."""
        state = _Call(self)
        for candidate in self._tries(candidates, needs, state, session):
            state.begin(candidate)
            try:
                value = call(candidate.target)
            except BaseException as exc:
                state.end(candidate, exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            state.end(candidate, None)
            return state.outcome(value, candidate)
        raise state.exhausted()

    @traced_run
    def stream(self, candidates: Iterable[Candidate[T]], start: Callable[[T], Iterable[C]], *,
               needs: Needs | None = None,
               on_select: Callable[[Outcome[None]], None] | None = None,
               session: str | None = None,
               resume: Callable[[BaseException], Continuation[T, C] | None] | None = None,
               ) -> Iterator[C]:
        """Items of ``start(candidate.target)``, failing over before the first item.

        An error after the first item propagates as itself: the caller has already seen part of
        one model's answer, and replaying another's would garble it. Unless ``resume`` (given
        the error, when it fails over) returns a :class:`Continuation`: the next candidates
        then continue the answer with its ``start`` (the adapter's continuation from the text
        already sent), skipping those that cannot continue a prefill where one is needed; when
        none is left, the error that cut the stream is raised. ``on_select`` is told which
        candidate streams, once its first item (or its end) has arrived (again for each
        candidate that resumes the stream).
        """
        state = _Call(self)
        cut: BaseException | None = None
        prefill = False
        for candidate in self._tries(candidates, needs, state, session):
            if prefill and not candidate.continues:
                state.cannot_continue(candidate)
                continue
            iterator: Iterator[C] | None = None
            state.begin(candidate)
            try:
                iterator = iter(start(candidate.target))
                first = next(iterator)
            except StopIteration:
                state.end(candidate, None)
                if on_select is not None:
                    on_select(state.outcome(None, candidate))
                return
            except BaseException as exc:
                _close(iterator)
                state.end(candidate, exc, continuing=cut is not None)
                if not isinstance(exc, Exception):
                    raise
                continue
            outcome = state.selected(candidate)
            if on_select is not None:
                on_select(outcome)
            error: BaseException | None = None
            try:
                yield first
                yield from iterator
            except Exception as exc:
                error = exc
                resumed = resume(exc) if resume is not None and self.fails_over(exc) else None
                if resumed is None:
                    raise
                state.cut(candidate, exc)
                start, prefill, cut = resumed.start, resumed.prefill, exc
                continue
            except BaseException as exc:
                error = exc
                raise
            finally:
                _close(iterator)
                if self.health is not None and candidate.endpoint is not None:
                    self.health.finish(candidate.endpoint,
                                       None if isinstance(error, GeneratorExit) else error)
            return
        if cut is not None:
            raise state.uncontinued(cut)
        raise state.exhausted()

    # -- async ------------------------------------------------------------------------------

    @traced_run
    async def arun(self, candidates: Iterable[Candidate[T]], call: Callable[[T], Any], *,
                   needs: Needs | None = None, session: str | None = None) -> Outcome[Any]:
        """Async :meth:`run`: ``await call(candidate.target)``."""
        state = _Call(self)
        for candidate in self._tries(candidates, needs, state, session):
            state.begin(candidate)
            try:
                value = await call(candidate.target)
            except BaseException as exc:
                state.end(candidate, exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            state.end(candidate, None)
            return state.outcome(value, candidate)
        raise state.exhausted()

    @traced_run
    async def astream(self, candidates: Iterable[Candidate[T]],
                      start: Callable[[T], AsyncIterable[C]], *, needs: Needs | None = None,
                      on_select: Callable[[Outcome[None]], None] | None = None,
                      session: str | None = None,
                      resume: Callable[[BaseException], Continuation[T, C] | None]
                      | None = None) -> AsyncIterator[C]:
        """Async :meth:`stream`: fails over before the first item, after it only by
        ``resume``."""
        state = _Call(self)
        cut: BaseException | None = None
        prefill = False
        for candidate in self._tries(candidates, needs, state, session):
            if prefill and not candidate.continues:
                state.cannot_continue(candidate)
                continue
            iterator: AsyncIterator[C] | None = None
            state.begin(candidate)
            try:
                iterator = aiter(start(candidate.target))
                first = await anext(iterator)
            except StopAsyncIteration:
                state.end(candidate, None)
                if on_select is not None:
                    on_select(state.outcome(None, candidate))
                return
            except BaseException as exc:
                await _aclose(iterator)
                state.end(candidate, exc, continuing=cut is not None)
                if not isinstance(exc, Exception):
                    raise
                continue
            outcome = state.selected(candidate)
            if on_select is not None:
                on_select(outcome)
            error: BaseException | None = None
            try:
                yield first
                async for item in iterator:
                    yield item
            except Exception as exc:
                error = exc
                resumed = resume(exc) if resume is not None and self.fails_over(exc) else None
                if resumed is None:
                    raise
                state.cut(candidate, exc)
                start, prefill, cut = resumed.start, resumed.prefill, exc
                continue
            except BaseException as exc:
                error = exc
                raise
            finally:
                await _aclose(iterator)
                if self.health is not None and candidate.endpoint is not None:
                    self.health.finish(candidate.endpoint,
                                       None if isinstance(error, GeneratorExit) else error)
            return
        if cut is not None:
            raise state.uncontinued(cut)
        raise state.exhausted()


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # closing a failed stream must not hide why it failed
            logger.debug("closing a failed stream raised", exc_info=True)


async def _aclose(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            logger.debug("closing a failed stream raised", exc_info=True)


__all__ = [
    "IMAGE_TOKENS",
    "LIMITS",
    "SKIPPED_FOR",
    "TRANSIENT_ERROR_NAMES",
    "Attempt",
    "Candidate",
    "Continuation",
    "FallbackPolicy",
    "Needs",
    "Outcome",
    "RetryOn",
    "candidate_settings",
    "combine_profiles",
    "estimate_tokens",
    "is_retryable",
    "status_code",
]
