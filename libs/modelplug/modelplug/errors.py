"""Typed errors: the one taxonomy every backend reports in.

Each class subclasses the builtin a caller would naturally catch (ValueError, ImportError,
ConnectionError, TimeoutError, PermissionError) so code written against plain Python exceptions
keeps working. Every error carries ``retryable`` (whether trying again, or another provider, may
succeed: the fallback policy's default), ``provider`` (the provider key, when known),
``status_code`` (the HTTP status the provider answered, if any) and ``retry_after`` (seconds the
provider asked to wait, if it said).

=============================  ===============================  =========
class                          builtin base                     retryable
=============================  ===============================  =========
ConfigurationError             ValueError                       no
  SettingError                 ValueError, TypeError            no
  UnsupportedCapabilityError   ValueError                       yes [1]_
    UnsupportedSchemaError     ValueError                       yes [1]_
  ModelNotFoundError           ValueError, FileNotFoundError    no
MissingDependencyError         ImportError                      no
AuthenticationError            PermissionError                  no
RateLimitError                 --                               yes
ProviderUnavailableError       ConnectionError                  yes
  ProviderTimeoutError         ConnectionError, TimeoutError    yes
  ServerBusyError              ConnectionError                  yes
BadRequestError                ValueError                       no
  ContextOverflowError         ValueError                       yes [2]_
RefusalError                   --                               no
OutputTruncatedError           ValueError                       no
FallbackExhaustedError         --                               if all were
=============================  ===============================  =========

.. [1] another candidate may have the capability.
.. [2] another candidate may have a larger context window.

:func:`map_sdk_error` is the one place where SDK and HTTP-client errors (openai, anthropic,
ollama, httpx) become these classes, recognised by class name and HTTP status so that checking
an error imports no SDK. Backends apply it at their boundary (see
:func:`modelplug.backends.base.maps_errors`) and raise the typed error ``from`` the original.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any


class ModelPlugError(Exception):
    """Base of every error modelplug raises itself."""

    #: Whether trying again (or another provider) may succeed; drives fallback defaults.
    retryable: bool = False
    #: The provider key (``"openai"``, ``"ollama"``, ...) the error came from, when known.
    provider: str | None = None
    #: The HTTP status the provider answered with, when there was one.
    status_code: int | None = None
    #: Seconds the provider asked to wait before trying again (``Retry-After``), when it said.
    retry_after: float | None = None
    #: The setting this error is about: the one to pass (``model_path``, ``api_key``), or for a
    #: :class:`SettingError` the one given that is not taken. The message states the fact; an
    #: adapter or the command line adds how its caller passes settings.
    setting: str | None = None

    def __init__(self, message: str = "", *, provider: str | None = None,
                 status_code: int | None = None, retry_after: float | None = None,
                 retryable: bool | None = None, setting: str | None = None,
                 **builtin: Any) -> None:
        super().__init__(message, **builtin)  # e.g. ImportError's name=, path=
        if setting is not None:
            self.setting = setting
        if provider is not None:
            self.provider = provider
        if status_code is not None:
            self.status_code = status_code
        if retry_after is not None:
            self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable


class ConfigurationError(ModelPlugError, ValueError):
    """A model string, setting or request that cannot work as given (fix the call): a request
    with no messages, an unknown ``response_format`` type, a malformed tool. Not retryable: every
    candidate of a fallback set would refuse it alike, so the set raises it at once.
    """


class UnknownProviderError(ConfigurationError):
    """The provider key of a model string is not registered."""


class UnknownModelError(ConfigurationError):
    """A closed-catalog provider does not know the model id, or a bare name matches nothing."""


class AmbiguousModelError(ConfigurationError):
    """A bare model name matches several providers and none is available locally."""


class SettingError(ConfigurationError, TypeError):
    """A keyword setting the provider does not take (a TypeError, as Python raises for an
    unexpected keyword argument). ``setting`` names it and ``suggestion`` the closest accepted
    name (if any is close), so an adapter or the command line can word the fix the way its
    caller passes settings."""

    def __init__(self, message: str = "", *, suggestion: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.suggestion = suggestion


def closest_name(name: str, options: Any) -> str | None:
    """The option a misspelt ``name`` most likely meant (``temprature`` -> ``temperature``)."""
    import difflib

    found = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.75)
    return found[0] if found else None


class UnsupportedCapabilityError(ConfigurationError):
    """The request needs something this model or backend cannot do (tools, images, a schema).

    Retryable: another candidate of a fallback set may have the capability. A request that no
    model could serve as given is a plain :class:`ConfigurationError` instead.
    """

    retryable = True


class UnsupportedSchemaError(UnsupportedCapabilityError):
    """A JSON schema (structured output, tool parameters) uses a keyword or value that the
    in-process grammar engine cannot enforce. Refused before generation, never loosened:
    ``keyword`` names the part of the schema that is the problem (when known)."""

    def __init__(self, message: str = "", *, keyword: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.keyword = keyword


class OutputTruncatedError(ModelPlugError, ValueError):
    """A structured answer (JSON schema, JSON mode, forced tool call) ended because the output
    budget ran out (``finish_reason='length'``): the JSON is incomplete, so it is not returned as
    if it were an answer. Raise ``max_tokens`` (or bound the schema's strings and arrays).
    ``text`` holds what was generated."""

    def __init__(self, message: str = "", *, text: str = "", max_tokens: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.text = text
        self.max_tokens = max_tokens


class MissingDependencyError(ModelPlugError, ImportError):
    """An optional SDK or runtime is not installed; the message names the pip extra."""


class ModelNotFoundError(ConfigurationError, FileNotFoundError):
    """Weights for an in-process model cannot be located locally, or a server lacks the model."""


class ProviderError(ModelPlugError):
    """The provider was asked and answered with (or failed with) an error."""


class AuthenticationError(ProviderError, PermissionError):
    """The provider refused the credentials (HTTP 401/403): a wrong, expired or unauthorised key."""


class RateLimitError(ProviderError):
    """The provider is rate-limiting (HTTP 429); ``retry_after`` says how long it asked to wait."""

    retryable = True


class ProviderUnavailableError(ProviderError, ConnectionError):
    """The provider could not be reached or could not answer: connection refused or reset, HTTP
    5xx, a stream cut midway, or a response that is not valid for its API."""

    retryable = True


class ProviderTimeoutError(ProviderUnavailableError, TimeoutError):
    """The provider did not answer within the configured ``timeout``."""


class CircuitOpenError(ProviderUnavailableError):
    """A fallback set or pool skipped a candidate whose endpoint failed recently and is cooling
    down (its health memory, :mod:`modelplug.routing`); it is probed again after the cooldown."""


class StreamInterruptedError(ProviderUnavailableError):
    """A stream failed after part of the answer reached the caller.

    ``partial`` holds what was streamed (the framework's merged message: an ``AIMessageChunk``
    in LangChain, a ``ChatResponse`` in LlamaIndex), ``usage`` its token usage where the
    provider had reported any, ``candidate`` the model that was streaming. The provider's own
    error is chained as ``__cause__``.
    """

    def __init__(self, message: str = "", *, partial: Any = None, usage: Any = None,
                 candidate: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.partial = partial
        self.usage = usage
        self.candidate = candidate


class ServerBusyError(ProviderUnavailableError):
    """An in-process model's request queue is full (its ``max_queue``): back-pressure, served as
    HTTP 503 by ``modelplug serve``. Retry later, or let a fallback set try another model."""

    status_code = 503


class BadRequestError(ProviderError, ValueError):
    """The provider rejected the request as invalid (HTTP 400/404/422): fix the request."""


class ContextOverflowError(BadRequestError):
    """The prompt does not fit the model's context window.

    Retryable: a fallback candidate with a larger window may fit it.
    """

    retryable = True


class RefusalError(ProviderError):
    """The model declined to answer (a refusal or the provider's content filter)."""


class FallbackExhaustedError(ModelPlugError):
    """Every candidate of a fallback set failed or was skipped.

    ``errors`` holds ``(candidate name, exception)`` for every candidate, in the order they were
    tried; a candidate skipped for lacking a capability appears with an
    :class:`UnsupportedCapabilityError`. The last error is chained as ``__cause__``.
    """

    def __init__(self, errors: list[tuple[str, BaseException]]) -> None:
        self.errors = list(errors)
        lines = [f"  {name}: {type(exc).__name__}: {exc}" for name, exc in self.errors]
        super().__init__(
            f"All {len(self.errors)} candidate model(s) failed or were skipped:\n"
            + "\n".join(lines)
            + "\nCheck that at least one candidate is reachable and can serve this request, "
            "or add another candidate."
        )

    @property
    def exceptions(self) -> list[BaseException]:
        """The errors alone, in the order the candidates were tried."""
        return [exc for _, exc in self.errors]

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        """True when every candidate failed for a transient reason (an outer fallback moves on)."""
        return bool(self.errors) and all(is_retryable(exc) for exc in self.exceptions)


# -- SDK errors onto the taxonomy -----------------------------------------------------------------

#: Class names (anywhere in the MRO) of SDK and HTTP-client errors that mean "no answer in time".
TIMEOUT_ERROR_NAMES = frozenset({
    "APITimeoutError",  # openai, anthropic
    "TimeoutException", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout",  # httpx
    "ReadTimeoutError", "ConnectTimeoutError",  # urllib3
    "ServerTimeoutError",  # aiohttp
})

#: Class names of SDK and HTTP-client errors that mean "could not reach the model" or "the model
#: is busy": openai/anthropic, httpx, requests/urllib3, aiohttp.
TRANSIENT_ERROR_NAMES = TIMEOUT_ERROR_NAMES | frozenset({
    "APIConnectionError", "RateLimitError", "InternalServerError", "ServiceUnavailableError",
    "OverloadedError",
    "NetworkError", "ConnectError", "ReadError", "WriteError", "CloseError", "RemoteProtocolError",
    "Timeout", "NewConnectionError",
    "ServerDisconnectedError", "ClientConnectionError", "ClientConnectorError",
})

#: Class names of errors that mean "the provider answered something that is not valid for its API"
#: (malformed JSON, a body that does not fit the documented shape, an undecodable stream).
MALFORMED_ERROR_NAMES = frozenset({"JSONDecodeError", "APIResponseValidationError",
                                   "DecodingError"})

#: How providers word "the prompt does not fit the context window" (OpenAI, Anthropic, Gemini,
#: llama-server, vLLM).
_CONTEXT_OVERFLOW = re.compile(
    r"context[_ ]length|context[_ ]window|context size|maximum context|prompt is too long|"
    r"too many tokens|exceed_context_size|input is too long", re.IGNORECASE)


def status_code(exc: BaseException) -> int | None:
    """The HTTP status an SDK error carries (``status_code``, ``response.status_code``, or
    google-genai's ``code``)."""
    for value in (getattr(exc, "status_code", None),
                  getattr(getattr(exc, "response", None), "status_code", None),
                  getattr(exc, "code", None) if "APIError" in _names(exc) else None):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 100:
            return value
    return None


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _detail(exc: BaseException) -> str:
    """The provider's own words: the error body's message where there is one."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    error = getattr(exc, "error", None)  # ollama.ResponseError
    if isinstance(error, str) and error:
        return error
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({type(cause).__name__}: {cause})"
    return text


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date)."""
    # ollama raises its ResponseError "from None" over httpx's error: the headers are there.
    response = getattr(exc, "response", None) or getattr(exc.__context__, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            from datetime import datetime, timezone

            when = parsedate_to_datetime(value)
            return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def amend_message(exc: BaseException, *, before: str = "", after: str = "") -> None:
    """Put words around an error's message in place (its type, attributes and traceback stay):
    how an adapter or the command line adds the hint that fits its caller."""
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{before}{exc.args[0]}{after}", *exc.args[1:])
        if isinstance(exc, ImportError) and exc.msg is not None:
            exc.msg = exc.args[0]


@contextlib.contextmanager
def from_env_variable(name: str, value: str) -> Iterator[None]:
    """Errors raised inside name the environment variable the bad value came from."""
    try:
        yield
    except ModelPlugError as exc:
        prefix = f"${name}={value!r}: "
        if not str(exc.args[0] if exc.args else "").startswith(prefix):
            amend_message(exc, before=prefix)
        raise


def redact(text: str, secrets: Any = ()) -> str:
    """``text`` with every secret (an API key) replaced by ``***``."""
    for secret in secrets:
        value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
        if isinstance(value, str) and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _redact_in_place(exc: BaseException, secrets: Any) -> None:
    """Scrub keys from the SDK's own error too: it stays chained as ``__cause__``, and
    tracebacks and loggers print it (a server may quote the key it refused)."""
    exc.args = tuple(redact(arg, secrets) if isinstance(arg, str) else arg for arg in exc.args)
    if isinstance(getattr(exc, "message", None), str):
        exc.message = redact(exc.message, secrets)  # type: ignore[attr-defined]


def map_sdk_error(exc: BaseException, *, provider: str | None = None,
                  timeout: float | None = None, secrets: Any = ()) -> BaseException:
    """The typed error for an SDK or HTTP-client error, or ``exc`` itself when it is not one.

    The caller raises the result ``from exc`` so the original stays chained. ``secrets`` (API
    keys) are redacted from the message. A :class:`ModelPlugError` is returned unchanged.
    """
    if isinstance(exc, ModelPlugError):
        return exc
    _redact_in_place(exc, secrets)
    names = _names(exc)
    status = status_code(exc)
    who = f"Provider {provider!r}" if provider else "The provider"
    detail = _detail(exc)
    kind: type[ModelPlugError] | None = None
    message = ""
    retry_after = None
    if names & MALFORMED_ERROR_NAMES:
        kind = ProviderUnavailableError
        message = (f"{who} sent a response that is not valid for its API ({type(exc).__name__}: "
                   f"{detail}). The server or a proxy in front of it is misbehaving; try again "
                   "or add a fallback candidate.")
    elif names & TIMEOUT_ERROR_NAMES or isinstance(exc, TimeoutError) or status == 408:
        kind = ProviderTimeoutError
        limit = f" ({timeout:g} s)" if isinstance(timeout, int | float) else ""
        message = (f"{who} did not answer within the timeout{limit}: {detail}. Raise timeout=..., "
                   "check the server's load, or add a fallback candidate.")
    elif status == 429 or "RateLimitError" in names:
        kind, retry_after = RateLimitError, _retry_after(exc)
        wait = f"Wait {retry_after:g} s (its Retry-After) and retry" \
            if retry_after is not None else "Wait and retry"
        message = (f"{who} is rate-limiting requests (HTTP 429: {detail}). {wait}, "
                   "lower the request rate, raise max_retries=..., or add a fallback candidate.")
    elif status in (401, 403):
        kind = AuthenticationError
        message = (f"{who} refused the credentials (HTTP {status}: {detail}). Check the API key "
                   "(api_key=... or the provider's environment variable) and its permissions.")
    elif status is not None and (status == 425 or status >= 500):
        kind = ProviderUnavailableError
        message = (f"{who} failed on its side (HTTP {status}: {detail}). Try again later, or add "
                   "a fallback candidate.")
    elif status is not None and status >= 400:
        if getattr(exc, "code", None) == "context_length_exceeded" or _CONTEXT_OVERFLOW.search(
                detail):
            kind = ContextOverflowError
            message = (f"The prompt does not fit the context window of the model at {who.lower()}"
                       f" (HTTP {status}: {detail}). Shorten the conversation, lower max_tokens, "
                       "or use a model with a larger window.")
        else:
            kind = BadRequestError
            message = (f"{who} rejected the request (HTTP {status}: {detail}). Fix the request; "
                       "sending it again will fail the same way.")
    elif (names & TRANSIENT_ERROR_NAMES or isinstance(exc, ConnectionError)
          or "ResponseError" in names):  # ollama's error line inside a stream has no status
        kind = ProviderUnavailableError
        message = (f"{who} could not be reached or stopped answering ({type(exc).__name__}: "
                   f"{detail}). Check that it is running and reachable, or add a fallback "
                   "candidate.")
    if kind is None:
        return exc
    return kind(redact(message, secrets), provider=provider, status_code=status,
                retry_after=retry_after)


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt, on this or another provider, may succeed.

    A :class:`ModelPlugError` says so itself (``retryable``); any other error (a third-party chat
    model's SDK error, a builtin) is read as the typed error :func:`map_sdk_error` would make of
    it. So: True for connection failures and timeouts, HTTP 408/425/429 and 5xx, a context-length
    overflow (a candidate with a larger window may fit), a malformed response, and a capability
    the model lacks (another candidate may have it). False for everything else: HTTP
    400/401/403/404/422, validation errors, ``ValueError``, ``TypeError``, bugs. Those would fail
    the same way on every candidate, or say something the caller must fix, so they are not masked.
    """
    if not isinstance(exc, ModelPlugError):
        exc = map_sdk_error(exc)
    return isinstance(exc, ModelPlugError) and bool(exc.retryable)


__all__ = [
    "MALFORMED_ERROR_NAMES",
    "TIMEOUT_ERROR_NAMES",
    "TRANSIENT_ERROR_NAMES",
    "AmbiguousModelError",
    "AuthenticationError",
    "BadRequestError",
    "CircuitOpenError",
    "ConfigurationError",
    "ContextOverflowError",
    "FallbackExhaustedError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "ModelPlugError",
    "OutputTruncatedError",
    "ProviderError",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RefusalError",
    "StreamInterruptedError",
    "UnknownModelError",
    "UnknownProviderError",
    "UnsupportedCapabilityError",
    "UnsupportedSchemaError",
    "is_retryable",
    "map_sdk_error",
    "redact",
    "status_code",
]
