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
    FallbackExhaustedError,
    ModelPlugError,
    UnsupportedCapabilityError,
    is_retryable,
    map_sdk_error,
    status_code,
)
from modelplug.profile import Profile
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


# -- candidates and the runners --------------------------------------------------------------


@dataclass
class Candidate(Generic[T]):
    """One model of a fallback set: a display name, what to call, and its profile."""

    name: str
    target: T
    profile: Profile | Mapping[str, Any] | None = None


@dataclass
class Outcome(Generic[R]):
    """The answer of a fallback run, which candidate gave it, and the failures before it."""

    value: R
    candidate: Candidate[Any]
    failures: list[tuple[str, BaseException]] = field(default_factory=list)


class FallbackPolicy:
    """Runs a call over candidates in order, failing over on the errors ``retry_on`` admits.

    ``retry_on``: exception classes, a predicate ``exc -> bool``, or None for
    :func:`is_retryable` (connection errors, timeouts, 429 and 5xx; not 400/401/404 nor
    validation errors). Classes match an error or the typed error
    :func:`~modelplug.errors.map_sdk_error` makes of it, so ``ConnectionError`` covers an SDK's
    own connection error (``openai.APIConnectionError``) raised by a third-party model.
    """

    def __init__(self, retry_on: RetryOn | None = None) -> None:
        self.retry_on = retry_on
        self._fails_over = _predicate(retry_on)

    def fails_over(self, exc: BaseException) -> bool:
        """Whether ``exc`` hands the request to the next candidate."""
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit, cancellation
            return False
        return bool(self._fails_over(exc))

    # -- shared steps ---------------------------------------------------------------------------

    def _eligible(self, candidates: Iterable[Candidate[T]], needs: Needs | None,
                  failures: list[tuple[str, BaseException]]) -> Iterator[Candidate[T]]:
        for candidate in candidates:
            reason = needs.unmet(candidate.profile) if needs is not None else None
            if reason is not None:
                error = UnsupportedCapabilityError(
                    f"Candidate {candidate.name!r} skipped: {reason}.")
                logger.info("%s", error)
                failures.append((candidate.name, error))
                continue
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

    def run(self, candidates: Iterable[Candidate[T]], call: Callable[[T], R], *,
            needs: Needs | None = None) -> Outcome[R]:
        """``call(candidate.target)`` on each eligible candidate until one returns."""
        failures: list[tuple[str, BaseException]] = []
        for candidate in self._eligible(candidates, needs, failures):
            try:
                value = call(candidate.target)
            except Exception as exc:
                self._failed(candidate, exc, failures)
                continue
            return Outcome(value, candidate, failures)
        raise self._exhausted(failures)

    def stream(self, candidates: Iterable[Candidate[T]], start: Callable[[T], Iterable[C]], *,
               needs: Needs | None = None,
               on_select: Callable[[Outcome[None]], None] | None = None) -> Iterator[C]:
        """Items of ``start(candidate.target)``, failing over only before the first item.

        An error after the first item propagates as itself: the caller has already seen part of
        one model's answer, and replaying another's would garble it. ``on_select`` is told which
        candidate streams, once its first item (or its end) has arrived.
        """
        failures: list[tuple[str, BaseException]] = []
        for candidate in self._eligible(candidates, needs, failures):
            iterator: Iterator[C] | None = None
            try:
                iterator = iter(start(candidate.target))
                first = next(iterator)
            except StopIteration:
                if on_select is not None:
                    on_select(Outcome(None, candidate, failures))
                return
            except Exception as exc:
                _close(iterator)
                self._failed(candidate, exc, failures)
                continue
            if on_select is not None:
                on_select(Outcome(None, candidate, failures))
            yield first
            yield from iterator
            return
        raise self._exhausted(failures)

    # -- async ------------------------------------------------------------------------------

    async def arun(self, candidates: Iterable[Candidate[T]], call: Callable[[T], Any], *,
                   needs: Needs | None = None) -> Outcome[Any]:
        """Async :meth:`run`: ``await call(candidate.target)``."""
        failures: list[tuple[str, BaseException]] = []
        for candidate in self._eligible(candidates, needs, failures):
            try:
                value = await call(candidate.target)
            except Exception as exc:
                self._failed(candidate, exc, failures)
                continue
            return Outcome(value, candidate, failures)
        raise self._exhausted(failures)

    async def astream(self, candidates: Iterable[Candidate[T]],
                      start: Callable[[T], AsyncIterable[C]], *, needs: Needs | None = None,
                      on_select: Callable[[Outcome[None]], None] | None = None,
                      ) -> AsyncIterator[C]:
        """Async :meth:`stream`: fails over only before the first item."""
        failures: list[tuple[str, BaseException]] = []
        for candidate in self._eligible(candidates, needs, failures):
            iterator: AsyncIterator[C] | None = None
            try:
                iterator = aiter(start(candidate.target))
                first = await anext(iterator)
            except StopAsyncIteration:
                if on_select is not None:
                    on_select(Outcome(None, candidate, failures))
                return
            except Exception as exc:
                await _aclose(iterator)
                self._failed(candidate, exc, failures)
                continue
            if on_select is not None:
                on_select(Outcome(None, candidate, failures))
            try:
                yield first
                async for item in iterator:
                    yield item
            finally:
                await _aclose(iterator)
            return
        raise self._exhausted(failures)


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
    "Candidate",
    "FallbackPolicy",
    "Needs",
    "Outcome",
    "RetryOn",
    "combine_profiles",
    "estimate_tokens",
    "is_retryable",
    "status_code",
]
