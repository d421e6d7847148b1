"""The backend protocol: the one seam between adapters and providers.

A backend takes a :class:`ChatRequest` and returns a :class:`ChatResponse` or yields
:class:`ChatChunk` objects, sync and async. It knows nothing of LangChain or LlamaIndex.
Networked backends override the async methods with their SDK's async client; in-process backends
keep the defaults here, which run the sync work in a thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, NoReturn, TypeVar

from modelplug.errors import ConfigurationError, UnsupportedCapabilityError, map_sdk_error
from modelplug.profile import Profile
from modelplug.registry import ProviderSpec
from modelplug.spec import ModelRef
from modelplug.tracing import instrument
from modelplug.types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    ToolCall,
    ToolCallDelta,
    Usage,
    normalise_tool_choice,
)

#: The output budget of an in-process request that sets no ``max_tokens`` when the model's own
#: generation config names none (a small model can otherwise ramble until its context is full).
#: Networked providers apply their own default.
DEFAULT_MAX_TOKENS = 512


class Backend:
    """Base class of every backend. Subclasses implement :meth:`chat` and :meth:`stream`."""

    def __init__(self, ref: ModelRef, spec: ProviderSpec, settings: dict[str, Any]) -> None:
        self.ref = ref
        self.spec = spec
        self.settings = settings

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        instrument(cls)  # OpenTelemetry spans of the model calls (modelplug.tracing)

    # -- what the model can do ---------------------------------------------------------------

    def profile(self) -> Profile:
        """Capabilities, cheap and without network: the catalog, refined by local probes."""
        return Profile.from_ref(self.ref)

    @property
    def continues_prefill(self) -> bool:
        """Whether a chat request ending in an assistant message with text is answered by
        continuing that text (the row's ``prefill``), so a fallback set may resume a cut stream
        here."""
        return self.spec.prefill is not None

    def probe(self) -> None:
        """Ask the running server what the model can do, so profile() can tell. Network allowed:
        called before the first request and by ``modelplug list``, never at construction."""

    def load(self) -> None:
        """Load an in-process model's weights now rather than on the first request, so a server
        replica that cannot load its model fails when it starts. Networked backends have nothing
        to load."""

    def serving_stats(self) -> dict[str, Any] | None:
        """For in-process models that batch concurrent requests: what their scheduler holds now
        (running, waiting, capacity; see :meth:`modelplug.scheduling.Scheduler.stats`), or None
        when nothing is loaded or the backend does not schedule."""
        return None

    def check(self, request: ChatRequest) -> None:
        """Refuse, before anything is sent, a request that cannot work as given
        (:class:`ConfigurationError`: the caller must fix it, so a fallback set raises it at once)
        or that this model is known not to support (:class:`UnsupportedCapabilityError`: another
        candidate may serve it)."""
        check_request(request)
        self.probe()
        profile = self.profile()
        if request.tools and request.tool_choice != "none" and profile.tool_calling is False:
            raise UnsupportedCapabilityError(
                f"Model '{self.ref}' does not support tool calling, but the request has "
                f"{len(request.tools)} tool(s). Use a tool-capable model, or declare the "
                f"capability of an ad-hoc model with '{self.ref};tools'."
            )
        if request.has_images and profile.image_inputs is False:
            raise UnsupportedCapabilityError(
                f"Model '{self.ref}' does not take image inputs, but the request has images. "
                f"Use a vision model, or declare it with '{self.ref};vision'."
            )
        kind = (request.response_format or {}).get("type", "text")
        if kind != "text" and profile.structured_output is False:
            raise UnsupportedCapabilityError(
                f"Model '{self.ref}' cannot honour response_format {kind!r}. Use a model with "
                "structured output, or ask for the shape as a forced tool call (one tool whose "
                "parameters are the schema, tool_choice naming it)."
            )
        if self.spec.in_process:  # their grammar refuses what it cannot enforce, before loading
            from modelplug.backends import structured

            schema = structured.answer_schema(request)
            if schema is not None:
                structured.compile_schema(schema)

    # -- errors --------------------------------------------------------------------------------

    def secrets(self) -> list[Any]:
        """Values that must never appear in an error message (the API key in use)."""
        return [self.settings["api_key"]] if self.settings.get("api_key") is not None else []

    def map_error(self, exc: BaseException) -> BaseException:
        """The typed error for ``exc`` raised by this backend's SDK (``exc`` if none fits).

        Networked backends decorate their calls with :func:`maps_errors`, which applies this.
        """
        return map_sdk_error(exc, provider=self.spec.key, timeout=self.settings.get("timeout"),
                             secrets=self.secrets())

    async def amap_error(self, exc: BaseException) -> BaseException:
        """:meth:`map_error` for async calls (a backend may ask the server for details)."""
        return self.map_error(exc)

    # -- calls ---------------------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> ChatResponse:
        raise NotImplementedError

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        raise NotImplementedError

    async def achat(self, request: ChatRequest) -> ChatResponse:
        return await asyncio.to_thread(self.chat, request)

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        async for chunk in iterate_in_thread(lambda: self.stream(request)):
            yield chunk

    def batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """Answer several requests. In-process backends override this with batched generation."""
        return [self.chat(r) for r in requests]

    async def abatch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        return list(await asyncio.gather(*(self.achat(r) for r in requests)))

    def complete(self, request: CompletionRequest) -> ChatResponse:
        """Raw text completion (no chat template), for backends that have it."""
        return collect_stream(self.stream_complete(request))

    def stream_complete(self, request: CompletionRequest) -> Iterator[ChatChunk]:
        raise UnsupportedCapabilityError(
            f"Provider {self.spec.key!r} has no raw text completion in modelplug; use chat "
            "completion instead."
        )

    async def acomplete(self, request: CompletionRequest) -> ChatResponse:
        return await asyncio.to_thread(self.complete, request)

    async def astream_complete(self, request: CompletionRequest) -> AsyncIterator[ChatChunk]:
        async for chunk in iterate_in_thread(lambda: self.stream_complete(request)):
            yield chunk

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order. Backends with an embeddings endpoint override this."""
        raise UnsupportedCapabilityError(
            f"Provider {self.spec.key!r} has no embeddings in modelplug; use a provider that "
            "has (openai, gemini, ollama, an OpenAI-compatible server, hf or llamacpp)."
        )

    async def aembed(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed, texts)


instrument(Backend)


#: The ``response_format`` types a request may carry (OpenAI's chat-completions spellings).
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


def check_request(request: ChatRequest) -> None:
    """Refuse a request no model could serve as given: no messages, a malformed tool, a
    tool_choice naming no tool, an unknown ``response_format``. These are the caller's to fix (:class:`ConfigurationError`, not
    retryable), never a reason to try another candidate."""
    if not request.messages:
        raise ConfigurationError(
            "The request has no messages. Pass at least one message (e.g. a user question).")
    for i, tool in enumerate(request.tools or []):
        check_tool(i, tool)
    normalise_tool_choice(request.tool_choice, request.tools)  # a name must name a tool
    response_format = request.response_format
    if response_format is None:
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in RESPONSE_FORMAT_TYPES:
        shown = kind if isinstance(response_format, dict) else response_format
        raise ConfigurationError(
            f"Unknown response_format type {shown!r}; use 'json_schema' or 'json_object' "
            "({'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}} or "
            "{'type': 'json_object'}), or leave response_format unset for plain text.")


def check_tool(index: int, tool: Any) -> None:
    """Refuse a function tool without a name or whose parameters are no JSON-schema object
    (provider-shaped tools of another ``type``, e.g. Anthropic's server tools, pass)."""
    if not isinstance(tool, dict):
        raise ConfigurationError(
            f"Tool {index} is {tool!r}, not a tool definition. Pass OpenAI-format dicts "
            "({'type': 'function', 'function': {'name': ..., 'parameters': {...}}}).")
    if tool.get("type") not in (None, "function"):
        return
    function = tool.get("function", tool)
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"Tool {index} has no name ({tool!r}). Every function tool needs "
            "{'function': {'name': ..., 'parameters': {...}}}.")
    schema = function.get("parameters", function.get("input_schema"))
    if schema is not None and (not isinstance(schema, dict)
                               or schema.get("type", "object") != "object"):
        raise ConfigurationError(
            f"Tool {name!r} has parameters {schema!r}; they must be a JSON schema of type "
            "'object' (e.g. {'type': 'object', 'properties': {...}}).")


F = TypeVar("F", bound=Callable[..., Any])


def maps_errors(method: F) -> F:
    """Decorate a backend call (sync or async, function or generator) so that errors its SDK
    raises leave as the typed error of :meth:`Backend.map_error`, the original chained.

    Streams are covered while they are iterated, not only when they open. Errors that are not an
    SDK's (a :class:`~modelplug.errors.ModelPlugError`, a bug) pass through unchanged.
    """
    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def agen(self: Backend, *args: Any, **kwargs: Any) -> Any:
            inner = method(self, *args, **kwargs)
            try:
                async for item in inner:
                    yield item
            except Exception as exc:
                _reraise(exc, await self.amap_error(exc))
            finally:
                await inner.aclose()
        return agen  # type: ignore[return-value]
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def coro(self: Backend, *args: Any, **kwargs: Any) -> Any:
            try:
                return await method(self, *args, **kwargs)
            except Exception as exc:
                _reraise(exc, await self.amap_error(exc))
        return coro  # type: ignore[return-value]
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def gen(self: Backend, *args: Any, **kwargs: Any) -> Any:
            try:
                return (yield from method(self, *args, **kwargs))
            except Exception as exc:
                _reraise(exc, self.map_error(exc))
        return gen  # type: ignore[return-value]

    @functools.wraps(method)
    def call(self: Backend, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            _reraise(exc, self.map_error(exc))
    return call  # type: ignore[return-value]


def _reraise(exc: BaseException, mapped: BaseException) -> NoReturn:
    """Raise ``mapped`` from ``exc``, or ``exc`` itself when nothing mapped it."""
    if mapped is exc:
        raise exc
    raise mapped from exc


class StreamCollector:
    """Collects a stream, chunk by chunk, into the answer so far: text and reasoning joined,
    signed thinking blocks kept in order, tool-call deltas assembled per index, and the last
    usage, finish reason, model and id given. :func:`collect_stream` collects a whole stream;
    an adapter whose framework wants the message so far at every step reads it after each
    :meth:`add`."""

    def __init__(self) -> None:
        self._text: list[str] = []  # pieces, joined into one when read
        self.reasoning = ""
        self.thinking_blocks: list[dict[str, Any]] = []
        self.calls: dict[int, ToolCallDelta] = {}
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.model = ""
        self.id = ""

    def add(self, chunk: ChatChunk) -> None:
        self._text.append(chunk.text)
        self.reasoning += chunk.reasoning
        self.thinking_blocks += chunk.thinking_blocks
        for delta in chunk.tool_calls:
            call = self.calls.setdefault(delta.index, ToolCallDelta(delta.index))
            call.id = call.id or delta.id
            call.name = call.name or delta.name
            call.arguments += delta.arguments
        self.usage = chunk.usage or self.usage
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.model = chunk.model or self.model
        self.id = chunk.id or self.id

    @property
    def text(self) -> str:
        # Joined once per read, and kept joined: a stream adds one piece per token, and a
        # framework that reads the answer so far at every step joins two pieces each time.
        parts = self._text
        if len(parts) > 1:
            parts[:] = ["".join(parts)]
        return parts[0] if parts else ""

    def tool_calls(self) -> list[ToolCall]:
        """The tool calls so far, in index order (arguments that do not parse yet, as a call
        still streaming has, carry ``error`` and stay in ``raw_arguments``)."""
        return [ToolCall.parse(c.id or f"call_{i}", c.name or "", c.arguments)
                for i, c in sorted(self.calls.items())]

    def response(self) -> ChatResponse:
        return ChatResponse(text=self.text, tool_calls=self.tool_calls(),
                            reasoning=self.reasoning, thinking_blocks=list(self.thinking_blocks),
                            usage=self.usage, finish_reason=self.finish_reason,
                            model=self.model, id=self.id)


def collect_stream(chunks: Iterable[ChatChunk]) -> ChatResponse:
    """A whole stream collected into one response (see :class:`StreamCollector`)."""
    collector = StreamCollector()
    for chunk in chunks:
        collector.add(chunk)
    return collector.response()


_DONE = object()


async def iterate_in_thread(make_iter: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Drive a blocking iterator in a worker thread and yield its items on the event loop.

    The loop stays free while the thread generates. If the consumer stops early (break,
    cancellation, aclose), the thread is told to stop and closes the iterator at the next item,
    which releases any model lock it holds.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    def put(item: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        iterator = None
        try:
            iterator = make_iter()
            for item in iterator:
                if stop.is_set():
                    break
                put(item)
        except BaseException as exc:
            put(_Raised(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            put(_DONE)

    # The caller's context (its current span, the traced call) carries over to the thread.
    worker = loop.run_in_executor(None, contextvars.copy_context().run, run)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        await asyncio.shield(worker) if not worker.done() else None


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
