"""Ollama's native API (``/api/chat``, ``/api/embed``, ``/api/show``) through the ``ollama`` SDK.

- Thinking is Ollama's own ``think=`` switch (``ChatRequest.reasoning``); ``message.thinking``
  comes back as reasoning.
- Images go in the message-level ``images=`` field, so only inline images work: base64 or a
  ``data:`` URL. An http(s) URL is an UnsupportedCapabilityError before any request (a fallback
  set moves on to a candidate that fetches URLs; the image is never silently dropped).
- A conversation from another provider: assistant content parts only it understands (signed
  thinking, tool_use blocks, refusal and reasoning parts) are left out; tool calls go by name.
- ``ChatRequest.headers`` (a pool's ``x-session-id``) go on each request through a request hook
  of the SDK's HTTP client (the SDK takes headers only per client).
- Tool calls arrive with arguments as objects and, in this API, without ids; each gets an id
  derived from its position, name and arguments, so a stream and its collected result agree.
- Ollama has no ``tool_choice``. ``"none"`` leaves the tools out; a forced choice (a tool name,
  or ``"required"``) is honoured with ``format=`` instead: the answer is constrained to the
  tool's JSON arguments (or to ``{"name", "arguments"}`` over all tools) and returned as a tool
  call, so forcing is real and never silently dropped.
- ``model_keep_alive_seconds`` becomes ``keep_alive``; ``timeout`` goes to the SDK's client. The
  native API has no retry (``max_retries`` is refused by the registry; use ``ollama-openai``).
- Sampling parameters go in ``options`` (``max_tokens`` as ``num_predict``), with
  ``model_kwargs`` (e.g. ``{"num_ctx": 8192}``) merged in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from modelplug.backends.base import collect_stream, maps_errors
from modelplug.backends.networked import NetworkedBackend
from modelplug.errors import ConfigurationError, ModelNotFoundError, UnsupportedCapabilityError
from modelplug.profile import Profile
from modelplug.types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    Message,
    ToolCall,
    ToolCallDelta,
    Usage,
    normalise_tool_choice,
)

#: Seconds the /api/show capability probe may take (profiles must stay cheap).
PROBE_TIMEOUT_S = 2.0
#: ChatRequest.extra keys that are /api/chat fields; any other extra key is a model option.
_CHAT_FIELDS = ("keep_alive", "logprobs", "top_logprobs")
_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,(?P<data>.*)$", re.DOTALL)
#: Content parts of an assistant turn only another provider understands (Anthropic's signed
#: thinking and tool_use blocks, OpenAI's refusal and reasoning parts): left out here, as the
#: tool calls themselves travel in ``tool_calls`` (a conversation moving to Ollama keeps working).
_FOREIGN_PARTS = frozenset({"thinking", "redacted_thinking", "tool_use", "refusal", "reasoning"})

#: The HTTP headers of the request being sent (``ChatRequest.headers``: a pool's x-session-id).
#: The ollama SDK takes headers per client only, so each client's request hook adds these.
_REQUEST_HEADERS: ContextVar[dict[str, str] | None] = ContextVar("modelplug_ollama_headers",
                                                                 default=None)


class _Done:
    """An awaitable that is already done: what the hook returns, so that httpx's async client
    (which awaits request hooks) and its sync one (which ignores what they return) share it."""

    def __await__(self) -> Iterator[None]:
        return iter(())


def _add_headers(request: Any) -> _Done:
    headers = _REQUEST_HEADERS.get()
    if headers:
        request.headers.update(headers)
    return _Done()


@contextmanager
def _sending(headers: dict[str, str] | None) -> Iterator[None]:
    """Requests sent inside carry ``headers`` (a stream's request goes out on its first part)."""
    token = _REQUEST_HEADERS.set(dict(headers) if headers else None)
    try:
        yield
    finally:
        _REQUEST_HEADERS.reset(token)


class OllamaBackend(NetworkedBackend):
    """Models served by Ollama, through ``ollama.Client`` / ``ollama.AsyncClient``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        keep = self.settings.get("model_keep_alive_seconds")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int | float)):
            raise ConfigurationError(
                f"model_keep_alive_seconds must be a number of seconds (negative keeps the model "
                f"loaded indefinitely, 0 unloads it at once); got {keep!r}."
            )
        self._shown: dict[str, Any] | None = None

    # -- clients --------------------------------------------------------------------------------

    def _client_kwargs(self, timeout: float | None = None) -> dict[str, Any]:
        # host=None lets the SDK use OLLAMA_HOST or its default, as the ollama CLI does.
        kwargs: dict[str, Any] = {"host": self.settings.get("base_url"),
                                  "event_hooks": {"request": [_add_headers]}}
        timeout = timeout if timeout is not None else self.settings.get("timeout")
        if timeout is not None:
            kwargs["timeout"] = timeout
        if self.settings.get("default_headers"):
            kwargs["headers"] = dict(self.settings["default_headers"])
        return kwargs

    def new_client(self, is_async: bool) -> Any:
        import ollama

        return (ollama.AsyncClient if is_async else ollama.Client)(**self._client_kwargs())

    # -- profile --------------------------------------------------------------------------------

    def probe(self) -> None:
        if self.ref.tools is None:  # neither the catalog nor ;flags say: ask the server
            self.show()

    def show(self) -> dict[str, Any]:
        """``/api/show`` for this model (capabilities, model_info), fetched once; {} if unreachable."""
        if self._shown is None:
            import httpx
            import ollama

            try:
                probe = ollama.Client(**self._client_kwargs(timeout=PROBE_TIMEOUT_S))
                self._shown = probe.show(self.ref.model_id).model_dump(by_alias=True)
            except (ollama.ResponseError, ConnectionError, httpx.HTTPError):
                self._shown = {}  # unknown model or no server: the catalog has the last word
        return self._shown

    def profile(self) -> Profile:
        """The catalog; for a model the catalog does not know, what the server's /api/show said
        once probe() asked it (before the first request): construction stays offline."""
        base = Profile.from_ref(self.ref).merged(structured_output=True)
        shown = self._shown or {}
        caps = shown.get("capabilities")
        if caps is None:
            return base
        context = next((v for k, v in (shown.get("model_info") or {}).items()
                        if k.endswith(".context_length") and isinstance(v, int)), None)
        tools = "tools" in caps
        return base.merged(tool_calling=tools, tool_choice=tools, tool_call_streaming=tools,
                           image_inputs="vision" in caps, reasoning_output="thinking" in caps,
                           max_input_tokens=context)

    def list_models(self) -> list[str]:
        """Names of the models this Ollama server has pulled (``/api/tags``)."""
        return [m.model for m in self.client.list().models if m.model]

    # -- request building -----------------------------------------------------------------------

    def check(self, request: ChatRequest) -> None:
        super().check(request)
        if request.reasoning and self.profile().reasoning_output is False:
            raise UnsupportedCapabilityError(
                f"Model '{self.ref}' does not think (Ollama lists no 'thinking' capability for "
                "it); drop reasoning=True or use a thinking model such as 'ollama:qwen3:8b'."
            )
        convert_messages(request.messages)  # inline-image rule etc., before any request

    def _common_params(self, request: ChatRequest | CompletionRequest,
                       **params: Any) -> dict[str, Any]:
        """Model, sampling options and keep_alive: what /api/chat and /api/generate share."""
        params["model"] = self.ref.model_id
        options: dict[str, Any] = dict(self.settings.get("model_kwargs") or {})
        for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"),
                             ("max_tokens", "num_predict"), ("seed", "seed"), ("stop", "stop")):
            value = getattr(request, ours)
            if value is not None:
                options[theirs] = list(value) if ours == "stop" else value
        for key, value in request.extra.items():
            if key in _CHAT_FIELDS:
                params[key] = value
            else:
                options[key] = value
        if options:
            params["options"] = options
        keep = self.settings.get("model_keep_alive_seconds")
        if keep is not None:
            params.setdefault("keep_alive", keep)
        return params

    def build_params(self, request: ChatRequest) -> dict[str, Any]:
        """Keyword arguments of ``Client.chat`` for ``request`` (no ``stream``)."""
        params = self._common_params(request, messages=convert_messages(request.messages))
        if request.reasoning is not None:
            params["think"] = request.reasoning

        forced = forced_tool_schema(request)
        if forced is not None:
            params["format"] = forced[1]
        elif request.tools and request.tool_choice != "none":
            params["tools"] = [_tool(t) for t in request.tools]
        if forced is None:
            # (An unknown response_format type never gets here: Backend.check refuses it.)
            if request.json_schema is not None:
                params["format"] = request.json_schema
            elif (request.response_format or {}).get("type") == "json_object":
                params["format"] = "json"
        return params

    # -- calls --------------------------------------------------------------------------------

    @maps_errors
    def chat(self, request: ChatRequest) -> ChatResponse:
        self.check(request)
        with _sending(request.headers):
            answer = self.client.chat(**self.build_params(request))
        return self._response(answer, request)

    @maps_errors
    async def achat(self, request: ChatRequest) -> ChatResponse:
        self.check(request)
        with _sending(request.headers):
            answer = await self.aclient.chat(**self.build_params(request))
        return self._response(answer, request)

    @maps_errors
    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        self.check(request)
        params = self.build_params(request)
        reader = _ChatEventReader(request, self.ref.model_id)
        parts = iter(self.client.chat(**params, stream=True))
        with _sending(request.headers):  # the request goes out with the first part
            first = next(parts, None)
        if first is not None:
            yield from reader.feed(first)
        for part in parts:
            yield from reader.feed(part)
        yield from reader.finish()

    @maps_errors
    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        self.check(request)
        params = self.build_params(request)
        reader = _ChatEventReader(request, self.ref.model_id)
        with _sending(request.headers):  # the request goes out with the first part
            parts = aiter(await self.aclient.chat(**params, stream=True))
            first = await anext(parts, None)
        if first is not None:
            for chunk in reader.feed(first):
                yield chunk
        async for part in parts:
            for chunk in reader.feed(part):
                yield chunk
        for chunk in reader.finish():
            yield chunk

    # -- raw completion (/api/generate with raw=True: no template) ------------------------------

    def _generate_params(self, request: CompletionRequest) -> dict[str, Any]:
        return self._common_params(request, prompt=request.prompt, raw=True, stream=True)

    @maps_errors
    def stream_complete(self, request: CompletionRequest) -> Iterator[ChatChunk]:
        for part in self.client.generate(**self._generate_params(request)):
            yield _generated_chunk(part, self.ref.model_id)

    @maps_errors
    async def astream_complete(self, request: CompletionRequest) -> AsyncIterator[ChatChunk]:
        async for part in await self.aclient.generate(**self._generate_params(request)):
            yield _generated_chunk(part, self.ref.model_id)

    async def acomplete(self, request: CompletionRequest) -> ChatResponse:
        return collect_stream([chunk async for chunk in self.astream_complete(request)])

    @maps_errors
    def embed(self, texts: list[str]) -> list[list[float]]:
        result = self.client.embed(**self._embed_params(texts))
        return [list(v) for v in result.embeddings]

    @maps_errors
    async def aembed(self, texts: list[str]) -> list[list[float]]:
        result = await self.aclient.embed(**self._embed_params(texts))
        return [list(v) for v in result.embeddings]

    def _embed_params(self, texts: list[str]) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.ref.model_id, "input": list(texts)}
        if self.settings.get("model_kwargs"):
            params["options"] = dict(self.settings["model_kwargs"])
        if self.settings.get("model_keep_alive_seconds") is not None:
            params["keep_alive"] = self.settings["model_keep_alive_seconds"]
        return params

    def _response(self, part: Any, request: ChatRequest) -> ChatResponse:
        message = part.message
        text = message.content or ""
        calls = [ToolCall.parse(call_id(i, c.function.name, c.function.arguments),
                                c.function.name, dict(c.function.arguments or {}))
                 for i, c in enumerate(message.tool_calls or [])]
        forced = forced_tool_schema(request)
        if forced is not None:
            calls, text = [forced_call(forced[0], text)], ""
        finish = _finish(part.done_reason, bool(calls))
        return ChatResponse(text=text, tool_calls=calls, reasoning=message.thinking or "",
                            usage=_usage(part), finish_reason=finish,
                            model=part.model or self.ref.model_id)

    # -- errors ---------------------------------------------------------------------------------

    def _not_found(self, exc: BaseException, pulled: list[str] | None) -> BaseException:
        listing = f" Models on this server: {pulled}." if pulled is not None else ""
        return ModelNotFoundError(
            f"Ollama has no model {self.ref.model_id!r} ({exc}).{listing} Pull it with "
            f"`ollama pull {self.ref.model_id}`, or pick a listed model.",
            provider=self.spec.key, status_code=404)

    @staticmethod
    def _is_not_found(exc: BaseException) -> bool:
        return getattr(exc, "status_code", None) == 404 and "not found" in str(exc).lower()

    def map_error(self, exc: BaseException) -> BaseException:
        """A 404 for the model: ModelNotFoundError listing the pulled models; else the taxonomy."""
        if not self._is_not_found(exc):
            return super().map_error(exc)
        try:
            pulled = self.list_models()
        except Exception:  # the listing is a courtesy; the 404 is the error
            pulled = None
        return self._not_found(exc, pulled)

    async def amap_error(self, exc: BaseException) -> BaseException:
        if not self._is_not_found(exc):
            return super().map_error(exc)
        try:
            pulled = [m.model for m in (await self.aclient.list()).models if m.model]
        except Exception:  # the listing is a courtesy
            pulled = None
        return self._not_found(exc, pulled)


class _ChatEventReader:
    """Reads the NDJSON parts of one /api/chat stream as :class:`ChatChunk` objects."""

    def __init__(self, request: ChatRequest, model: str) -> None:
        self.forced = forced_tool_schema(request)
        self.model = model
        self.n_calls = 0
        self.buffer: list[str] = []  # forced "required" over several tools: one delta at the end
        self.last: Any = None

    def feed(self, part: Any) -> Iterator[ChatChunk]:
        self.model = part.model or self.model
        message = part.message
        content = message.content or ""
        deltas = []
        if self.forced is not None and content:
            name = self.forced[0]
            if name is None:
                self.buffer.append(content)
                content = ""
            else:  # the constrained answer is the tool's arguments: stream it as such
                first = self.n_calls == 0
                self.n_calls = 1
                deltas.append(ToolCallDelta(0, id=forced_id(name) if first else None,
                                            name=name if first else None, arguments=content))
                content = ""
        for call in message.tool_calls or []:
            index = self.n_calls
            self.n_calls += 1
            args = dict(call.function.arguments or {})
            deltas.append(ToolCallDelta(index, id=call_id(index, call.function.name, args),
                                        name=call.function.name, arguments=json.dumps(args)))
        if content or message.thinking or deltas:
            yield ChatChunk(text=content, reasoning=message.thinking or "", tool_calls=deltas,
                            model=self.model)
        if part.done:
            self.last = part

    def finish(self) -> Iterator[ChatChunk]:
        deltas = []
        if self.forced is not None and self.forced[0] is None:
            call = forced_call(None, "".join(self.buffer))
            deltas.append(ToolCallDelta(0, id=call.id, name=call.name,
                                        arguments=call.raw_arguments))
            self.n_calls = 1
        last = self.last
        yield ChatChunk(tool_calls=deltas, usage=_usage(last) if last is not None else None,
                        finish_reason=_finish(getattr(last, "done_reason", None),
                                              self.n_calls > 0),
                        model=self.model)


def _usage(part: Any) -> Usage:
    return Usage(input_tokens=part.prompt_eval_count or 0, output_tokens=part.eval_count or 0)


def _generated_chunk(part: Any, model: str) -> ChatChunk:
    """One /api/generate NDJSON part; the last (done) carries usage and the finish reason."""
    if not part.done:
        return ChatChunk(text=part.response or "", model=part.model or model)
    return ChatChunk(text=part.response or "", usage=_usage(part), model=part.model or model,
                     finish_reason=_finish(part.done_reason, False))


def _finish(done_reason: str | None, has_calls: bool) -> str:
    if done_reason == "length":
        return "length"
    return "tool_calls" if has_calls else "stop"


def call_id(index: int, name: str, arguments: Any) -> str:
    """A tool-call id for an API that gives none: stable for the same call at the same place."""
    args = json.dumps(arguments, sort_keys=True) if not isinstance(arguments, str) else arguments
    digest = hashlib.sha256(f"{index}:{name}:{args}".encode()).hexdigest()[:24]
    return f"call_{digest}"


def forced_id(name: str) -> str:
    return f"call_{hashlib.sha256(f'forced:{name}'.encode()).hexdigest()[:24]}"


# -- forced tool choice through format= ---------------------------------------------------------


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    return _function(tool).get("parameters") or {"type": "object", "properties": {}}


def forced_tool_schema(request: ChatRequest) -> tuple[str | None, dict[str, Any]] | None:
    """(tool name or None for "any of them", format schema) when the request forces a tool."""
    choice = normalise_tool_choice(request.tool_choice, request.tools)
    if not request.tools or choice in (None, "auto", "none"):
        return None
    tools = {_function(t)["name"]: t for t in request.tools}
    if choice == "required":
        if len(tools) == 1:
            choice = next(iter(tools))
        else:
            return None, {"anyOf": [
                {"type": "object",
                 "properties": {"name": {"const": name}, "arguments": _parameters(tool)},
                 "required": ["name", "arguments"]}
                for name, tool in tools.items()]}
    return choice, _parameters(tools[choice])


def forced_call(name: str | None, text: str) -> ToolCall:
    """The constrained answer of a forced tool choice as a tool call."""
    if name is not None:
        return ToolCall.parse(forced_id(name), name, text)
    try:
        wrapped = json.loads(text)
        name, args = wrapped["name"], wrapped["arguments"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return ToolCall(forced_id("?"), "", {}, text,
                        error=f"forced tool answer is not {{'name', 'arguments'}} JSON: {exc}")
    return ToolCall.parse(forced_id(name), name, args if isinstance(args, dict) else str(args))


# -- message conversion -------------------------------------------------------------------------


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = _function(tool)
    return {"type": "function", "function": {
        "name": function["name"], "description": function.get("description", ""),
        "parameters": _parameters(tool)}}


def inline_image(url: str) -> str:
    """An image_url part's URL as the bare base64 that Ollama's ``images=`` field takes."""
    if not isinstance(url, str):
        raise ConfigurationError(f"An image_url part needs a URL string; got {url!r}.")
    match = _DATA_URL.match(url)
    if match:
        return match["data"]
    if url.startswith(("http://", "https://")):
        # A capability this provider lacks (not a malformed request): a fallback set moves on
        # to a candidate that takes image URLs. Never dropped: that would change the question.
        raise UnsupportedCapabilityError(
            f"Ollama's native API takes inline images only (base64 or a data: URL), not the "
            f"http(s) URL {url[:80]!r}. Download the image and pass it as "
            "'data:image/png;base64,...', or use a provider that fetches image URLs."
        )
    if url.startswith("data:"):
        raise ConfigurationError(
            f"Image data URL {url[:40]!r}... is not base64; use 'data:<type>;base64,<data>'."
        )
    return url  # bare base64, as Ollama's own API takes it


def convert_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """OpenAI-format messages as /api/chat messages (images and tool results at message level).

    Anthropic-signed ``thinking_blocks`` stay out, as reasoning text does."""
    names: dict[str, str] = {}  # tool_call_id -> tool name, for tool results
    out = []
    for message in messages:
        role = message.get("role")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant", "tool"):
            raise ConfigurationError(
                f"Message role {role!r} has no Ollama equivalent; use 'system', 'user', "
                "'assistant' or 'tool'."
            )
        content = message.get("content")
        text, images = content or "", []
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, str):
                    parts.append(part)
                elif part.get("type") == "text":
                    parts.append(part.get("text", ""))
                elif part.get("type") == "image_url":
                    image = part.get("image_url")
                    images.append(inline_image(image.get("url") if isinstance(image, dict)
                                               else image))
                elif role == "assistant" and part.get("type") in _FOREIGN_PARTS:
                    continue
                else:
                    raise UnsupportedCapabilityError(
                        f"Content part type {part.get('type')!r} is not supported by Ollama's "
                        "native API; use text or image_url parts."
                    )
            text = "".join(parts)
        converted: dict[str, Any] = {"role": role, "content": text}
        if images:
            converted["images"] = images
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function", {})
                names[call.get("id", "")] = function.get("name", "")
                raw = function.get("arguments")
                args = ToolCall.parse(call.get("id", ""), function.get("name", ""), raw)
                calls.append({"function": {"name": function.get("name"),
                                           "arguments": args.arguments}})
            converted["tool_calls"] = calls
        if role == "tool":
            name = message.get("name") or names.get(message.get("tool_call_id", ""))
            if name:
                converted["tool_name"] = name
        out.append(converted)
    return out
