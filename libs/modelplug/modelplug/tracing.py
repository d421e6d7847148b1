"""OpenTelemetry spans for model calls, in the GenAI semantic conventions.

With ``opentelemetry-api`` installed (the ``modelplug[otel]`` extra) and a tracer provider
configured (``opentelemetry.trace.set_tracer_provider``, or :func:`configure` here), every call a
backend answers is a span: ``chat {model}``, ``text_completion {model}`` or
``embeddings {model}``, kind CLIENT, with ``gen_ai.operation.name``, ``gen_ai.provider.name``
(the real provider: ``anthropic``, ``openai``, ``llamacpp``...), ``gen_ai.request.model``, the
request parameters (``gen_ai.request.temperature``, ``max_tokens``, ``top_p``, ``seed``,
``stop_sequences``...), ``gen_ai.response.model``, ``gen_ai.response.id``,
``gen_ai.response.finish_reasons``, ``gen_ai.usage.*`` (input, output, cache read and creation,
reasoning, audio), ``server.address``/``server.port`` for networked providers, and
``error.type`` with an ERROR status when the call fails. A stream's span ends when the stream
ends or is closed, with the usage its last chunk carried and
``gen_ai.response.time_to_first_chunk``. A fallback set's or pool's run
(:class:`modelplug.fallback.FallbackPolicy`) is a ``modelplug.fallback`` span with one
``modelplug.attempt {candidate}`` child per candidate tried (the candidate's model span under
it), each failed one with its ``error.type``; skipped candidates are events of the run's span.

Names follow the GenAI conventions of open-telemetry/semantic-conventions-genai (model/gen-ai:
``gen_ai.usage.cache_read.input_tokens``, ``gen_ai.usage.cache_creation.input_tokens``,
``gen_ai.usage.reasoning.output_tokens``, ``gen_ai.usage.audio.input_tokens``...). Message
contents are never recorded.

Without opentelemetry, or without a provider, every hook here is a cheap no-op: opentelemetry is
imported on the first model call, never when modelplug is imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("modelplug.tracing")

__all__ = ["PROVIDER_NAMES", "TRACED_METHODS", "configure", "fallback_trace", "instrument",
           "provider_name", "traced_run", "tracer"]

#: modelplug provider keys whose ``gen_ai.provider.name`` (the conventions' well-known value)
#: differs; every other provider is named by its modelplug key.
PROVIDER_NAMES = {"gemini": "gcp.gemini", "xai": "x_ai", "mistral": "mistral_ai"}

#: Backend methods traced, and the operation each is.
TRACED_METHODS = {
    "chat": "chat", "achat": "chat", "stream": "chat", "astream": "chat",
    "complete": "text_completion", "acomplete": "text_completion",
    "stream_complete": "text_completion", "astream_complete": "text_completion",
    "embed": "embeddings", "aembed": "embeddings",
    "batch": "chat", "abatch": "chat",  # one span per request, as long as the batch
}
_STREAMS = frozenset({"stream", "astream", "stream_complete", "astream_complete"})

_trace: Any = None  # the opentelemetry.trace module, False when absent
_provider: Any = None  # a provider given to configure(), else the global one
_tracer: tuple[Any, Any] | None = None  # (provider, its tracer for modelplug)
_enabled = os.environ.get("MODELPLUG_OTEL", "").lower() not in ("0", "false", "off", "no")
#: The backend whose traced call is running in this context: its inner calls (a default achat
#: running chat in a thread, complete collecting stream_complete) are part of that one span.
_active: contextvars.ContextVar[Any] = contextvars.ContextVar("modelplug_traced_call",
                                                              default=None)


def configure(*, tracer_provider: Any = None, enabled: bool | None = None) -> None:
    """Send modelplug's spans to ``tracer_provider`` instead of the global one (None: the
    global one again); ``enabled=False`` turns them off (as ``MODELPLUG_OTEL=0`` does), e.g.
    when an instrumentation of the framework already traces every model call."""
    global _provider, _enabled
    _provider = tracer_provider
    if enabled is not None:
        _enabled = bool(enabled)


def tracer() -> Any:
    """modelplug's tracer, or None: opentelemetry absent, no provider configured, or off."""
    global _trace
    if not _enabled:
        return None
    if _trace is None:
        try:
            from opentelemetry import trace
        except ImportError:
            trace = False
        _trace = trace
    if _trace is False:
        return None
    provider = _provider if _provider is not None else _trace.get_tracer_provider()
    if isinstance(provider, _trace.ProxyTracerProvider | _trace.NoOpTracerProvider):
        return None
    global _tracer
    cached = _tracer
    if cached is None or cached[0] is not provider:
        from modelplug import __version__
        cached = _tracer = (provider, provider.get_tracer("modelplug", __version__))
    return cached[1]


def provider_name(provider: str) -> str:
    """``gen_ai.provider.name`` of a modelplug provider key."""
    return PROVIDER_NAMES.get(provider, provider)


def _error(span: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode
    span.set_attribute("error.type", type(exc).__qualname__)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))


# -- one model call ---------------------------------------------------------------------------


def _request_attributes(request: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for name in ("temperature", "top_p", "max_tokens", "seed"):
        value = getattr(request, name, None)
        if value is not None:
            attrs[f"gen_ai.request.{name}"] = value
    stop = getattr(request, "stop", None)
    if stop:
        attrs["gen_ai.request.stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    extra = getattr(request, "extra", None) or {}
    for name in ("top_k", "frequency_penalty", "presence_penalty"):
        if isinstance(extra.get(name), int | float):
            attrs[f"gen_ai.request.{name}"] = extra[name]
    kind = (getattr(request, "response_format", None) or {}).get("type")
    if kind in ("json_object", "json_schema"):
        attrs["gen_ai.output.type"] = "json"
    return attrs


def _server(backend: Any) -> dict[str, Any]:
    spec = backend.spec
    if spec.in_process:
        return {}
    from modelplug.routing import backend_endpoint
    endpoint = backend_endpoint(backend)
    if endpoint is None or not endpoint.base_url:
        return {}
    parts = urlsplit(endpoint.base_url)
    if not parts.hostname:
        return {}
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return {"server.address": parts.hostname, **({"server.port": port} if port else {})}


def _usage_attributes(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    attrs = {"gen_ai.usage.input_tokens": usage.input_tokens,
             "gen_ai.usage.output_tokens": usage.output_tokens}
    for field, name in (("cache_read_tokens", "cache_read.input_tokens"),
                        ("cache_creation_tokens", "cache_creation.input_tokens"),
                        ("reasoning_tokens", "reasoning.output_tokens"),
                        ("audio_input_tokens", "audio.input_tokens"),
                        ("audio_output_tokens", "audio.output_tokens")):
        value = getattr(usage, field, 0)
        if value:
            attrs[f"gen_ai.usage.{name}"] = value
    return attrs


def _response_attributes(response: Any) -> dict[str, Any]:
    """Attributes of a ChatResponse, or of a stream's last chunk."""
    attrs = _usage_attributes(getattr(response, "usage", None))
    if getattr(response, "model", ""):
        attrs["gen_ai.response.model"] = response.model
    if getattr(response, "id", ""):
        attrs["gen_ai.response.id"] = response.id
    if getattr(response, "finish_reason", None):
        attrs["gen_ai.response.finish_reasons"] = [response.finish_reason]
    return attrs


class _CallSpan:
    """The span of one traced backend call."""

    def __init__(self, tracer_: Any, backend: Any, method: str, args: tuple[Any, ...]) -> None:
        from opentelemetry.trace import SpanKind
        operation = TRACED_METHODS[method]
        model = backend.ref.model_id
        attrs: dict[str, Any] = {"gen_ai.operation.name": operation,
                                 "gen_ai.provider.name": provider_name(backend.ref.provider),
                                 "gen_ai.request.model": model, **_server(backend)}
        if args and operation != "embeddings":
            attrs.update(_request_attributes(args[0]))
        if method in _STREAMS:
            attrs["gen_ai.request.stream"] = True
        self.span = tracer_.start_span(f"{operation} {model}", kind=SpanKind.CLIENT,
                                       attributes=attrs)
        self.started = time.perf_counter()
        self.first = True
        self.last: dict[str, Any] = {}

    def chunk(self, chunk: Any) -> None:
        try:
            self._chunk(chunk)
        except Exception:  # tracing never fails a call
            logger.debug("modelplug could not read a chunk for its span", exc_info=True)

    def _chunk(self, chunk: Any) -> None:
        if self.first:
            self.first = False
            self.span.set_attribute("gen_ai.response.time_to_first_chunk",
                                    time.perf_counter() - self.started)
        self.last.update(_response_attributes(chunk))

    def answered(self, result: Any) -> None:
        try:
            self._answered(result)
        except Exception:  # tracing never fails a call
            logger.debug("modelplug could not read an answer for its span", exc_info=True)

    def _answered(self, result: Any) -> None:
        if isinstance(result, list):  # embeddings
            if result and isinstance(result[0], list):
                self.span.set_attribute("gen_ai.embeddings.dimension.count", len(result[0]))
        else:
            self.span.set_attributes(_response_attributes(result))

    def end(self, exc: BaseException | None = None) -> None:
        if self.last:
            self.span.set_attributes(self.last)
        if exc is not None and not isinstance(exc, GeneratorExit):
            _error(self.span, exc)
        self.span.end()

    def current(self) -> Any:
        """Context manager making the span current (its children nest under it)."""
        from opentelemetry.trace import use_span
        return use_span(self.span, end_on_exit=False, record_exception=False,
                        set_status_on_exception=False)


def _start(backend: Any, method: str, args: tuple[Any, ...]) -> _CallSpan | None:
    if _active.get() is backend:
        return None
    tracer_ = tracer()
    if tracer_ is None:
        return None
    try:
        return _CallSpan(tracer_, backend, method, args)
    except Exception:  # tracing never fails a call: it runs untraced
        logger.debug("modelplug could not start a span for %s", method, exc_info=True)
        return None


def _traced_batch(method: Callable[..., Any]) -> Callable[..., Any]:
    """A batch (an in-process backend's one batched generation, or the default loop) as one
    ``chat`` span per request, each ending with its own answer."""
    def begin(backend: Any, requests: Any) -> list[_CallSpan] | None:
        if _active.get() is backend:
            return None
        tracer_ = tracer()
        return None if tracer_ is None else [_CallSpan(tracer_, backend, "chat", (r,))
                                             for r in requests]

    def end(calls: list[_CallSpan], results: Any, exc: BaseException | None) -> None:
        for i, call in enumerate(calls):
            if exc is None and i < len(results):
                call.answered(results[i])
            call.end(exc)

    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def abatch(self: Any, requests: Any, *args: Any, **kwargs: Any) -> Any:
            calls = begin(self, requests)
            if calls is None:
                return await method(self, requests, *args, **kwargs)
            token = _active.set(self)
            try:
                results = await method(self, requests, *args, **kwargs)
            except BaseException as exc:
                end(calls, None, exc)
                raise
            finally:
                _active.reset(token)
            end(calls, results, None)
            return results
        return abatch

    @functools.wraps(method)
    def batch(self: Any, requests: Any, *args: Any, **kwargs: Any) -> Any:
        calls = begin(self, requests)
        if calls is None:
            return method(self, requests, *args, **kwargs)
        token = _active.set(self)
        try:
            results = method(self, requests, *args, **kwargs)
        except BaseException as exc:
            end(calls, None, exc)
            raise
        finally:
            _active.reset(token)
        end(calls, results, None)
        return results
    return batch


@contextlib.contextmanager
def _within(var: contextvars.ContextVar[Any], value: Any,
            inner: Any = None) -> Iterator[None]:
    """``var`` set to ``value`` (and ``inner`` entered) for the block, then reset."""
    token = var.set(value)
    try:
        with inner if inner is not None else contextlib.nullcontext():
            yield
    finally:
        var.reset(token)


def _wrap_stream(method: Callable[..., Any], begin: Callable[[Any, tuple[Any, ...]], Any],
                 step: Callable[[Any, Any], Any], on_item: Callable[[Any, Any], None],
                 finish: Callable[[Any, BaseException | None], None]) -> Callable[..., Any]:
    """``method`` (a generator function, sync or async) wrapped: when the stream starts,
    ``begin(self, args)`` opens a record (None: the stream passes through untouched); each step
    runs within ``step(self, record)``, ``on_item(record, item)`` sees each item, and
    ``finish(record, error)`` runs once when the stream ends, fails or is closed."""
    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def agen(self: Any, *args: Any, **kwargs: Any) -> Any:
            record = begin(self, args)
            if record is None:
                async for item in method(self, *args, **kwargs):
                    yield item
                return
            inner = method(self, *args, **kwargs)
            error: BaseException | None = None
            try:
                while True:
                    with step(self, record):
                        try:
                            item = await inner.__anext__()
                        except StopAsyncIteration:
                            break
                    on_item(record, item)
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                try:
                    await inner.aclose()
                finally:
                    finish(record, error)
        return agen

    @functools.wraps(method)
    def gen(self: Any, *args: Any, **kwargs: Any) -> Any:
        record = begin(self, args)
        if record is None:
            return (yield from method(self, *args, **kwargs))
        inner = method(self, *args, **kwargs)
        error: BaseException | None = None
        try:
            while True:
                with step(self, record):
                    try:
                        item = next(inner)
                    except StopIteration:
                        break
                on_item(record, item)
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                inner.close()
            finally:
                finish(record, error)
    return gen


def _traced(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    if name in ("batch", "abatch"):
        return _traced_batch(method)
    if inspect.isasyncgenfunction(method) or inspect.isgeneratorfunction(method):
        # the span is current, and the call marked, only within each step
        return _wrap_stream(method, lambda self, args: _start(self, name, args),
                            lambda self, call: _within(_active, self, call.current()),
                            lambda call, item: call.chunk(item),
                            lambda call, error: call.end(error))
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def coro(self: Any, *args: Any, **kwargs: Any) -> Any:
            call = _start(self, name, args)
            if call is None:
                return await method(self, *args, **kwargs)
            token = _active.set(self)
            try:
                with call.current():
                    result = await method(self, *args, **kwargs)
            except BaseException as exc:
                call.end(exc)
                raise
            finally:
                _active.reset(token)
            call.answered(result)
            call.end()
            return result
        return coro

    @functools.wraps(method)
    def call_(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _start(self, name, args)
        if call is None:
            return method(self, *args, **kwargs)
        token = _active.set(self)
        try:
            with call.current():
                result = method(self, *args, **kwargs)
        except BaseException as exc:
            call.end(exc)
            raise
        finally:
            _active.reset(token)
        call.answered(result)
        call.end()
        return result
    return call_


def instrument(cls: type) -> None:
    """Trace the model-call methods ``cls`` defines itself (see :data:`TRACED_METHODS`);
    :class:`modelplug.backends.Backend` applies it to itself and every subclass."""
    for name in TRACED_METHODS:
        method = cls.__dict__.get(name)
        if callable(method) and not getattr(method, "__modelplug_traced__", False):
            wrapped = _traced(method, name)
            wrapped.__modelplug_traced__ = True  # type: ignore[attr-defined]
            setattr(cls, name, wrapped)


# -- a fallback set's run ---------------------------------------------------------------------


class _NoTrace:
    """What a fallback run records when nothing traces."""

    def skip(self, candidate: str, error: BaseException) -> None: ...
    def begin(self, candidate: str) -> None: ...
    def end(self, exc: BaseException | None) -> None: ...
    def selected(self) -> None: ...


_NO_TRACE = _NoTrace()
_run: contextvars.ContextVar[_NoTrace | None] = contextvars.ContextVar("modelplug_fallback_run",
                                                                     default=None)


class _FallbackTrace(_NoTrace):
    """A ``modelplug.fallback`` span and its ``modelplug.attempt`` children."""

    def __init__(self, tracer_: Any, strategy: str) -> None:
        from opentelemetry import context, trace
        self._context, self._trace = context, trace
        self.tracer = tracer_
        self.span = tracer_.start_span("modelplug.fallback",
                                       attributes={"modelplug.fallback.strategy": strategy})
        self.attempt: Any = None
        self.name = ""
        self.token: Any = None
        self.tried = 0

    def skip(self, candidate: str, error: BaseException) -> None:
        self.span.add_event("modelplug.fallback.skip", {
            "modelplug.fallback.candidate": candidate, "error.type": type(error).__qualname__,
            "exception.message": str(error)[:500]})

    def begin(self, candidate: str) -> None:
        self.tried += 1
        self.name = candidate
        self.attempt = self.tracer.start_span(
            f"modelplug.attempt {candidate}", context=self._trace.set_span_in_context(self.span),
            attributes={"modelplug.fallback.candidate": candidate,
                        "modelplug.fallback.attempt": self.tried})
        self.token = self._context.attach(self._trace.set_span_in_context(self.attempt))

    def selected(self) -> None:
        """A stream's candidate sent its first item: its span stays open until the stream ends,
        but is no longer current (the caller's code runs between the items)."""
        if self.token is not None:
            self._context.detach(self.token)
            self.token = None

    def end(self, exc: BaseException | None) -> None:
        """The attempt ended: answered (``exc`` None), failed, or cut mid-stream."""
        self.selected()
        if self.attempt is None:
            return
        attempt, self.attempt = self.attempt, None
        if exc is not None and not isinstance(exc, GeneratorExit):
            _error(attempt, exc)
        attempt.end()

    def finish(self, exc: BaseException | None) -> None:
        """The run ended: answered by the last candidate tried (``exc`` None), or with
        ``exc``; a stream's attempt still open ends with it."""
        self.end(exc)
        self.span.set_attribute("modelplug.fallback.attempts", self.tried)
        if exc is None or isinstance(exc, GeneratorExit):
            self.span.set_attribute("modelplug.fallback.answered_by", self.name)
        else:
            _error(self.span, exc)
        self.span.end()


def fallback_trace() -> _NoTrace:
    """The recorder of the fallback run traced in this context (a no-op when none)."""
    return _run.get() or _NO_TRACE


def traced_run(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate :class:`modelplug.fallback.FallbackPolicy`'s run, arun, stream and astream: each
    call is a ``modelplug.fallback`` span (when a tracer is configured), which the run's
    bookkeeping reaches through :func:`fallback_trace` and which ends when the call does."""
    def begin(policy: Any) -> _FallbackTrace | None:
        tracer_ = tracer()
        return None if tracer_ is None else _FallbackTrace(tracer_, policy.strategy)

    if inspect.isasyncgenfunction(method) or inspect.isgeneratorfunction(method):
        return _wrap_stream(method, lambda self, args: begin(self),
                            lambda self, run: _within(_run, run),
                            lambda run, item: None,
                            lambda run, error: run.finish(error))
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def coro(self: Any, *args: Any, **kwargs: Any) -> Any:
            run = begin(self)
            token = _run.set(run)
            try:
                result = await method(self, *args, **kwargs)
            except BaseException as exc:
                if run is not None:
                    run.finish(exc)
                raise
            finally:
                _run.reset(token)
            if run is not None:
                run.finish(None)
            return result
        return coro

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        run = begin(self)
        token = _run.set(run)
        try:
            result = method(self, *args, **kwargs)
        except BaseException as exc:
            if run is not None:
                run.finish(exc)
            raise
        finally:
            _run.reset(token)
        if run is not None:
            run.finish(None)
        return result
    return call
