"""An OpenAI-compatible HTTP server in front of any backend: ``modelplug serve MODEL``.

The server speaks the backend protocol directly. The neutral types already have OpenAI
chat-completions shapes, so a request body becomes a :class:`ChatRequest` with a few renames
and a response goes back the same way; any backend works, in-process models included. Any
OpenAI client (the ``openai`` SDK, ``ChatOpenAI``, another machine's ``ChatModelPlug`` with a
``llamaserver:``/``vllm:`` model and ``base_url=``) can then use it.

Routes: ``POST /v1/chat/completions`` (streaming as SSE ``data:`` lines ending with
``data: [DONE]``, tools, usage), ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``.
An image model (``modality="image"``, ``--modality image``) is served at ``POST
/v1/images/generations`` (``b64_json`` PNGs) and an audio model at ``POST /v1/audio/speech``
(a WAV file) instead of the chat routes.
Errors come back as OpenAI error JSON with a matching status code. When an API key is set
(``api_key=`` or ``$MODELPLUG_SERVE_API_KEY``) every request but ``/health`` must carry it as
``Authorization: Bearer <key>``; :func:`serve` refuses a non-loopback bind without one.

The server is what an endpoint exposes to the world, so it checks requests as the OpenAI API
does, before any work: a body over ``max_request_bytes`` is refused with 413 before it is
parsed, and every malformed field is a 400 naming the field (``param``), the bad value and the
fix.

Calls go through the backend's async methods: in-process models admit concurrent requests on
their scheduler (:mod:`modelplug.scheduling`) or take turns on the model's lock, and the event
loop stays free. A client that disconnects mid-stream closes the backend stream at once, which
frees its slot; on shutdown open streams are cut after a few seconds and every scheduler stops.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import json
import math
import os
import re
import socket
import time
import uuid
from array import array
from collections.abc import AsyncIterator
from typing import Any

from modelplug import scheduling
from modelplug.backends import Backend, create_backend
from modelplug.backends.base import RESPONSE_FORMAT_TYPES, check_tool
from modelplug.catalog.media import MediaModel
from modelplug.errors import ConfigurationError, MissingDependencyError, ModelPlugError
from modelplug.media import MediaBackend, MediaLike, MediaRef
from modelplug.spec import ModelLike
from modelplug.types import ChatChunk, ChatRequest, ChatResponse, ToolCall, Usage

try:
    import anyio
    import jsonschema
    import referencing
    import referencing.exceptions
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from referencing.jsonschema import DRAFT202012
    from starlette.exceptions import HTTPException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "modelplug's server needs fastapi, uvicorn and jsonschema. Install them with: "
        "pip install 'modelplug[serve]'") from exc

API_KEY_ENV = "MODELPLUG_SERVE_API_KEY"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Largest request body accepted (413 above it): room for a few base64 images, while a text
#: prompt this long is far over any local model's context already.
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
#: Seconds open connections get to finish on shutdown before they are cut: a stream may run for
#: minutes, and SIGTERM / Ctrl-C must stop generation promptly.
SHUTDOWN_GRACE_SECONDS = 3
ROLES = ("system", "developer", "user", "assistant", "tool")
#: Content-part types of chat messages, as OpenAI has them (whether a model takes images or
#: audio is its backend's check).
PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")


class RequestError(ConfigurationError):
    """A request body the server cannot turn into a backend request (HTTP 400). ``param`` is
    the field's path (``messages[1].role``), ``code`` OpenAI's error code for the problem."""

    def __init__(self, message: str, param: str | None = None,
                 code: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.param, self.code = param, code


class RequestTooLargeError(RequestError):
    """A request body over ``max_request_bytes`` (HTTP 413)."""

    status_code = 413


def create_app(model: ModelLike | Backend | MediaLike | MediaBackend | None = None, *,
               api_key: str | None = None, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
               modality: str = "chat", **settings: Any) -> FastAPI:
    """The ASGI app serving ``model`` (a model string, catalog member, ready backend, or None
    for the local default). ``settings`` are the provider's settings, e.g. ``model_path=``.

    ``modality="image"`` or ``"audio"`` serves ``model`` as an image or audio model (the
    ``hf:`` of those namespaces is a diffusers pipeline or text-to-audio model, see
    :mod:`modelplug.media`; a media catalog member or backend needs no ``modality``). Its
    ``settings`` may hold generation defaults (``num_inference_steps=``, ``duration_s=``, ...)
    that a request's own fields override.

    ``api_key`` defaults to ``$MODELPLUG_SERVE_API_KEY``; an empty key means no key is asked.
    ``max_request_bytes``: larger request bodies are refused with 413 before they are parsed.
    The app's shutdown (its lifespan) stops every in-process model's scheduler.
    """
    if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) \
            or max_request_bytes < 1:
        raise ConfigurationError(f"max_request_bytes must be a positive int (bytes); got "
                                 f"{max_request_bytes!r}.")
    kind = media_modality(model, modality)
    defaults: dict[str, Any] = {}
    if kind is not None:
        backend, defaults = media_backend(model, kind, settings)
    else:
        backend = model if isinstance(model, Backend) else create_backend(model, **settings)
    served = str(backend.ref)
    key = resolve_key(api_key)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # What still waits or generates fails now, so the process exits without finishing
        # answers nobody will read (the worker threads are joined off the event loop).
        await asyncio.to_thread(scheduling.shutdown_all, "the server is shutting down")

    app = FastAPI(title="modelplug", description=f"OpenAI-compatible API for {served}",
                  lifespan=lifespan)
    app.state.backend = backend

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Any:
        if key and request.url.path != "/health":  # load balancers probe without a key
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                     key.encode()):
                return error_response(401, "Missing or wrong API key. Send it as "
                                      "'Authorization: Bearer <key>' (the openai SDK's api_key).",
                                      "invalid_request_error", code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(ModelPlugError)
    async def modelplug_error(_: Request, exc: ModelPlugError) -> JSONResponse:
        return error_json(exc)

    @app.exception_handler(Exception)  # anything else: answered, and logged by the server
    async def any_error(_: Request, exc: Exception) -> JSONResponse:
        return error_json(exc)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness, as llama-server has it, with the in-process scheduler's load if any, and
        the process's routing health table (``modelplug.routing.health_table()``: every
        endpoint a fallback set or pool in this process has called)."""
        from modelplug.routing import health_table

        stats = (backend.serving_stats() if isinstance(backend, Backend) else None) or {}
        closed = bool(stats.get("closed"))
        return JSONResponse({"status": "shutting_down" if closed else "ok", "model": served,
                             **stats, "routing": health_table()},
                            status_code=503 if closed else 200)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(backend)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Any:
        if model_id != served:
            return error_response(404, f"Model {model_id!r} is not served here; this server "
                                  f"serves {served!r}.", "invalid_request_error",
                                  code="model_not_found")
        return model_card(backend)

    if isinstance(backend, MediaBackend):
        add_media_routes(app, backend, defaults, max_request_bytes)
        return app

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await json_body(request, max_request_bytes)
        chat = to_chat_request(body)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if not body.get("stream"):
            response = await backend.achat(chat)
            return to_completion(response, completion_id, served)
        chunks = backend.astream(chat)
        # The first chunk is pulled before any byte is sent, so an error that comes before the
        # answer starts (a refused capability, a model that will not load) keeps its status code.
        try:
            first = await anext(chunks, None)
        except BaseException:
            await chunks.aclose()  # type: ignore[attr-defined]
            raise
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = sse_events(first, chunks, completion_id, served, include_usage)
        return ClosingStream(events, chunks)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        body = await json_body(request, max_request_bytes)
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise RequestError("'input' must be a string or a list of strings (token arrays "
                               "are not accepted).", param="input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise RequestError(f"encoding_format {fmt!r} is not supported; use 'float' or "
                               "'base64'.", param="encoding_format")
        vectors = await backend.aembed(texts)
        return {"object": "list", "model": served, "data": [
            {"object": "embedding", "index": i,
             "embedding": base64.b64encode(array("f", v).tobytes()).decode()
             if fmt == "base64" else v}
            for i, v in enumerate(vectors)]}

    return app


def serve(model: ModelLike | None = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          api_key: str | None = None, log_level: str = "info",
          max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, insecure_no_api_key: bool = False,
          **settings: Any) -> None:
    """Run the server with uvicorn until interrupted (SIGTERM or Ctrl-C: open streams are cut
    after a few seconds). Binds to loopback unless ``host`` says otherwise; a non-loopback
    ``host`` (``"0.0.0.0"`` to accept other machines) needs an API key, or
    ``insecure_no_api_key=True`` to serve anyone who can reach the port."""
    check_bind(host, resolve_key(api_key), insecure_no_api_key)
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("modelplug's server needs uvicorn. Install it with: "
                                     "pip install 'modelplug[serve]'") from exc
    app = create_app(model, api_key=api_key, max_request_bytes=max_request_bytes, **settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS)


def resolve_key(api_key: str | None) -> str:
    """The key requests must carry: ``api_key``, else ``$MODELPLUG_SERVE_API_KEY``; "" for none."""
    return api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")


def check_bind(host: str, api_key: str, insecure_no_api_key: bool = False) -> None:
    """Refuse to serve other machines without an API key unless the caller opted out: an open
    endpoint lets anyone who reaches the port use the model (and a cloud backend's key)."""
    if api_key or insecure_no_api_key or is_loopback(host):
        return
    raise ConfigurationError(
        f"Refusing to serve on {host!r} (not a loopback address) without an API key: anyone who "
        f"can reach this port could use the model. Set a key with --api-key or ${API_KEY_ENV} "
        "(api_key= in Python), bind to 127.0.0.1, or pass --insecure-no-api-key "
        "(insecure_no_api_key=True) to serve without a key anyway.")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` accepts connections from this machine only (127.0.0.0/8, ::1,
    localhost, or a name that resolves to those alone)."""
    name = host.strip().strip("[]")
    if not name:
        return False  # "" binds every interface
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback
                                   for a in addresses)


class ClosingStream(StreamingResponse):
    """An SSE response that closes the backend stream however the response ends, a client that
    disconnected or a shutdown that cut it included: the in-process model's slot is freed at
    once, not when the abandoned generator is garbage-collected."""

    def __init__(self, events: AsyncIterator[str], backend_stream: AsyncIterator[Any]) -> None:
        super().__init__(events, media_type="text/event-stream")
        self.backend_stream = backend_stream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled task must still close them
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self.backend_stream.aclose()  # type: ignore[attr-defined]


# -- OpenAI wire format <-> neutral types -----------------------------------------------------


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, read only up to ``limit`` bytes: the declared length is checked
    before anything is read, and the bytes are counted as they come (a chunked body has none)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(f"{int(declared):,} bytes", limit)
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > limit:
            raise too_large(f"more than {limit:,} bytes", limit)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"The request body is not valid JSON: {exc}. Send a JSON object "
                           "(Content-Type: application/json).") from exc
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    return body


def too_large(size: str, limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"The request body is {size}; this server accepts at most {limit:,} bytes. Send a "
        "shorter request, or start the server with a larger --max-request-bytes "
        "(max_request_bytes=).", code="request_too_large")


def to_chat_request(body: dict[str, Any]) -> ChatRequest:
    """An OpenAI chat-completions request body as a :class:`ChatRequest`, every field checked
    first as the OpenAI API checks it (:class:`RequestError` names the first bad one)."""
    messages = body.get("messages")
    check_messages(messages)
    check_sampling(body)
    tools = body.get("tools") or None
    choice = check_tools(tools, body.get("tool_choice"))
    check_response_format(body.get("response_format"))
    stop = body.get("stop")
    # The reasoning switch as OpenAI-compatible local servers take it (and modelplug's own
    # openai_compat backend sends it), or OpenAI's reasoning_effort="none".
    switch = (body.get("chat_template_kwargs") or {}).get("enable_thinking")
    if switch is None and body.get("reasoning_effort") is not None:
        switch = body["reasoning_effort"] != "none"
    max_tokens = body.get("max_completion_tokens")
    return ChatRequest(
        messages=messages,  # type: ignore[arg-type]
        tools=tools,
        tool_choice=choice,
        response_format=body.get("response_format"),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        max_tokens=max_tokens if max_tokens is not None else body.get("max_tokens"),
        stop=[stop] if isinstance(stop, str) else stop,
        seed=body.get("seed"),
        reasoning=switch,
    )


# -- request checks: one per concern, phrased as the OpenAI API phrases its 400s ---------------


def shown(value: Any) -> str:
    """A bad value as an error message quotes it, cut short (it may be a 10 MB prompt)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def json_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a decimal"),
                       (str, "a string"), (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def invalid_type(param: str, value: Any, expected: str) -> RequestError:
    return RequestError(f"Invalid type for '{param}': expected {expected}, but got "
                        f"{json_type(value)} ({shown(value)}) instead.", param, "invalid_type")


def missing(param: str, fix: str) -> RequestError:
    return RequestError(f"Missing required parameter: '{param}'. {fix}", param,
                        "missing_required_parameter")


def check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"'messages' must be a non-empty array of messages, e.g. [{{'role': "
                           f"'user', 'content': 'Hello'}}]; got {shown(messages)}.", "messages",
                           "invalid_value")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid_type(where, message, "an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"Invalid value for '{where}.role': {shown(role)}. Supported "
                               f"values are: {', '.join(map(repr, ROLES))}.", f"{where}.role",
                               "invalid_value")
        check_content(where, role, message)
        if role == "tool" and not (isinstance(message.get("tool_call_id"), str)
                                   and message["tool_call_id"]):
            raise missing(f"{where}.tool_call_id", "A tool message answers one tool call: set "
                          "'tool_call_id' to the 'id' of the assistant's tool call.")


def check_content(where: str, role: str, message: dict[str, Any]) -> None:
    content = message.get("content")
    if content is None:
        if role == "assistant" and message.get("tool_calls"):
            return  # a turn that only calls tools
        raise missing(f"{where}.content", "Give the message a 'content' string (or an array "
                      "of content parts).")
    if isinstance(content, list):
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            if not isinstance(part, dict):
                raise invalid_type(at, part, "a content part object, e.g. {'type': 'text', "
                                   "'text': '...'}")
            if part.get("type") not in PART_TYPES:  # a part no backend reads would be dropped
                raise RequestError(f"Invalid value for '{at}.type': {shown(part.get('type'))}. "
                                   f"Supported values are: {', '.join(map(repr, PART_TYPES))}.",
                                   f"{at}.type", "invalid_value")
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise missing(f"{at}.text", "A text part carries its text as a string: "
                              "{'type': 'text', 'text': '...'}.")
    elif not isinstance(content, str):
        raise invalid_type(f"{where}.content", content, "a string or an array of content parts")


def check_int(body: dict[str, Any], name: str, minimum: int | None = None) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_type(name, value, "an integer")
    if minimum is not None and value < minimum:
        raise RequestError(f"Invalid '{name}': integer below minimum value. Expected a value "
                           f">= {minimum}, but got {value} instead.", name,
                           "integer_below_min_value")


def check_number(body: dict[str, Any], name: str, low: float, high: float,
                 low_inclusive: bool = True) -> None:
    value = body.get(name)
    if value is None:
        return
    # JSON parsing accepts NaN and Infinity, which no range check would catch.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid_type(name, value, f"a decimal between {low} and {high}")
    if value < low or (value == low and not low_inclusive):
        bound = f">= {low}" if low_inclusive else f"> {low}"
        raise RequestError(f"Invalid '{name}': decimal below minimum value. Expected a value "
                           f"{bound}, but got {value} instead.", name, "decimal_below_min_value")
    if value > high:
        raise RequestError(f"Invalid '{name}': decimal above maximum value. Expected a value "
                           f"<= {high}, but got {value} instead.", name, "decimal_above_max_value")


def check_sampling(body: dict[str, Any]) -> None:
    """The scalar fields: token limits, sampling, n, stop, seed, stream."""
    check_int(body, "max_tokens", 1)
    check_int(body, "max_completion_tokens", 1)
    check_number(body, "temperature", 0, 2)
    check_number(body, "top_p", 0, 1, low_inclusive=False)
    check_int(body, "n")
    if body.get("n", 1) not in (None, 1):
        raise RequestError(f"Invalid 'n': this server generates one choice per request, got "
                           f"{body['n']}. Leave 'n' unset or set it to 1 (send n requests for n "
                           "answers).", "n", "unsupported_value")
    check_int(body, "seed")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise invalid_type("stop", stop, "a string or an array of up to 4 strings")
        if len(stop) > 4:
            raise RequestError(f"Invalid 'stop': array too long. Expected an array with maximum "
                               f"length 4, but got an array with length {len(stop)} instead.",
                               "stop", "array_above_max_length")
    for name, expected in (("stream", bool), ("stream_options", dict),
                           ("chat_template_kwargs", dict)):
        value = body.get(name)
        if value is not None and not isinstance(value, expected):
            raise invalid_type(name, value, "a boolean" if expected is bool else "an object")


def check_tools(tools: Any, choice: Any) -> str | None:
    """Checks ``tools`` and ``tool_choice``; returns the choice as :class:`ChatRequest` takes it
    (``"auto"``, ``"none"``, ``"required"`` or the name of the tool to force)."""
    if tools is not None and not isinstance(tools, list):
        raise invalid_type("tools", tools, "an array of tools")
    for i, tool in enumerate(tools or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function" or not isinstance(tool.get("function"), dict):
            raise RequestError(f"Invalid 'tools[{i}]': {shown(tool)} is not a function tool. "
                               "Write it as {'type': 'function', 'function': {'name': ..., "
                               "'parameters': {...}}}.", f"tools[{i}]", "invalid_value")
        try:
            check_tool(i, tool)
        except ConfigurationError as exc:
            raise RequestError(str(exc), f"tools[{i}].function", "invalid_value") from None
        if tool["function"].get("parameters") is not None:
            check_json_schema(tool["function"]["parameters"], f"tools[{i}].function.parameters")
    names = [t["function"]["name"] for t in tools or []]
    forms = "'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}"
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise RequestError(f"Invalid 'tool_choice': {shown(choice)}. Use {forms}.",
                               "tool_choice", "invalid_value")
        if name not in names:
            raise RequestError(f"Invalid 'tool_choice': it names the tool {name!r}, which is not "
                               f"in 'tools' ({names}). Name one of those tools, or add it.",
                               "tool_choice.function.name", "invalid_value")
        return name
    if choice not in (None, "none", "auto", "required"):
        raise RequestError(f"Invalid value for 'tool_choice': {shown(choice)}. Supported values "
                           f"are: {forms}.", "tool_choice", "invalid_value")
    if choice == "required" and not names:
        raise RequestError("Invalid 'tool_choice': 'required' needs tools, and 'tools' is "
                           "empty. Send the tools, or leave tool_choice unset.", "tool_choice",
                           "invalid_value")
    return choice


def check_response_format(response_format: Any) -> None:
    if response_format is None:
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in RESPONSE_FORMAT_TYPES:
        bad = kind if isinstance(response_format, dict) else response_format
        raise RequestError(
            f"Invalid value for 'response_format.type': {shown(bad)}. Supported values are: "
            f"{', '.join(map(repr, RESPONSE_FORMAT_TYPES))}, e.g. {{'type': 'json_schema', "
            "'json_schema': {'name': ..., 'schema': {...}}}.", "response_format.type",
            "invalid_value")
    if kind != "json_schema":
        return
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid_type("response_format.json_schema", spec,
                           "an object {'name': ..., 'schema': {...}}")
    if spec.get("schema") is not None:
        check_json_schema(spec["schema"], "response_format.json_schema.schema")


def check_json_schema(schema: Any, param: str) -> None:
    """A valid Draft 2020-12 JSON Schema whose every ``$ref`` resolves within itself: a bad one
    would otherwise fail deep inside grammar compilation, as a 500."""
    if not isinstance(schema, dict):
        raise invalid_type(param, schema, "a JSON Schema object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
        bad_ref = next(unresolvable_refs(schema), None)
    except jsonschema.SchemaError as exc:
        raise RequestError(f"Invalid JSON Schema in '{param}': {exc.message} (at "
                           f"{exc.json_path}). Fix the schema (JSON Schema Draft 2020-12).",
                           param, "invalid_json_schema") from None
    except RecursionError:
        raise RequestError(f"Invalid JSON Schema in '{param}': it is nested too deeply. Use "
                           "'$defs' and '$ref' for recursive shapes.", param,
                           "invalid_json_schema") from None
    if bad_ref is not None:
        raise RequestError(f"Invalid JSON Schema in '{param}': the reference {bad_ref!r} does "
                           "not resolve. Point '$ref' at a definition the schema contains (e.g. "
                           "'#/$defs/Name' with 'Name' under '$defs'); other documents are not "
                           "fetched.", param, "invalid_json_schema")


#: Keywords whose values are data, not subschemas: a "$ref" inside them is no reference.
DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


def unresolvable_refs(schema: dict[str, Any]) -> Any:
    """Each ``$ref`` of ``schema`` that does not resolve, looked up as a validator would (from
    the base URI its enclosing ``$id`` sets); no document is fetched."""
    resource = DRAFT202012.create_resource(schema)
    registry: Any = referencing.Registry().with_resource(resource.id() or "", resource)

    def walk(node: Any, resolver: Any) -> Any:
        if isinstance(node, list):
            for item in node:
                yield from walk(item, resolver)
            return
        if not isinstance(node, dict):
            return
        if isinstance(node.get("$id"), str):
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                yield ref
        for key, value in node.items():
            if key not in DATA_KEYWORDS:
                yield from walk(value, resolver)

    yield from walk(schema, registry.resolver(base_uri=resource.id() or ""))


def model_card(backend: Backend | MediaBackend) -> dict[str, Any]:
    card: dict[str, Any] = {"id": str(backend.ref), "object": "model", "created": 0,
                            "owned_by": backend.ref.provider}
    if isinstance(backend, MediaBackend):
        return {**card, "modality": backend.ref.modality}
    context = backend.profile().max_input_tokens
    if context:
        card["context_length"] = context
    return card


def usage_json(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens,
                                      "audio_tokens": usage.audio_input_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens,
                                          "audio_tokens": usage.audio_output_tokens}}


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.raw_arguments}}


def to_completion(response: ChatResponse, completion_id: str, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant",
                               "content": response.text or (None if response.tool_calls else "")}
    if response.tool_calls:
        message["tool_calls"] = [tool_call_json(c) for c in response.tool_calls]
    if response.reasoning:  # the field llama-server, vLLM and DeepSeek use
        message["reasoning_content"] = response.reasoning
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": response.finish_reason or "stop"}],
            "usage": usage_json(response.usage)}


def chunk_json(completion_id: str, model: str, delta: dict[str, Any] | None,
               finish_reason: str | None = None, usage: Usage | None = None) -> str:
    event = {"id": completion_id, "object": "chat.completion.chunk",
             "created": int(time.time()), "model": model,
             "choices": [] if delta is None else
             [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    if usage is not None:
        event["usage"] = usage_json(usage)
    return f"data: {json.dumps(event)}\n\n"


def chunk_delta(chunk: ChatChunk) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if chunk.text:
        delta["content"] = chunk.text
    if chunk.reasoning:
        delta["reasoning_content"] = chunk.reasoning
    if chunk.tool_calls:
        delta["tool_calls"] = [
            {"index": d.index, **({"id": d.id, "type": "function"} if d.id else {}),
             "function": {**({"name": d.name} if d.name else {}), "arguments": d.arguments}}
            for d in chunk.tool_calls]
    return delta


async def sse_events(first: ChatChunk | None, rest: AsyncIterator[ChatChunk], completion_id: str,
                     model: str, include_usage: bool) -> AsyncIterator[str]:
    """Chunks as OpenAI ``chat.completion.chunk`` events: a role delta, content and tool-call
    deltas, the finish reason, the usage chunk if asked for, then ``[DONE]``. An error after the
    stream began is sent as an ``error`` event, as OpenAI does."""
    finish, usage = None, None
    try:
        yield chunk_json(completion_id, model, {"role": "assistant", "content": ""})
        chunk = first
        while chunk is not None:
            finish = chunk.finish_reason or finish
            usage = chunk.usage or usage
            delta = chunk_delta(chunk)
            if delta:
                yield chunk_json(completion_id, model, delta)
            chunk = await anext(rest, None)
        yield chunk_json(completion_id, model, {}, finish or "stop")
        if include_usage and usage is not None:
            yield chunk_json(completion_id, model, None, usage=usage)
    except Exception as exc:
        yield f"data: {json.dumps(error_body(exc)[1])}\n\n"
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
    yield "data: [DONE]\n\n"


# -- image and audio models ---------------------------------------------------------------------

#: What :func:`create_app` serves: a chat model (chat and embeddings routes), an image model or
#: an audio model (their generation routes).
MODALITIES = ("chat", "image", "audio")
IMAGES_ROUTE = "/v1/images/generations"
SPEECH_ROUTE = "/v1/audio/speech"
#: Fields of OpenAI's bodies that ask nothing of the answer: accepted and not used.
UNUSED_FIELDS = ("model", "user")
#: Most images one request may ask for (OpenAI's own limit on ``n``).
MAX_IMAGES = 10
#: Generation arguments the routes take beside OpenAI's fields, where the model's backend takes
#: them, each with its check (``size`` stands for width and height; ``strength`` needs a
#: reference image, which the generations route does not take).
MEDIA_PARAM_CHECKS: dict[str, Any] = {
    "seed": lambda body: check_int(body, "seed"),
    "num_inference_steps": lambda body: check_int(body, "num_inference_steps", 1),
    "guidance_scale": lambda body: check_number(body, "guidance_scale", 0, 100),
    "duration_s": lambda body: check_number(body, "duration_s", 0, 600, low_inclusive=False),
    "negative_prompt": lambda body: check_string(body, "negative_prompt"),
}
NOT_REQUEST_FIELDS = ("width", "height", "strength")


def media_modality(model: Any, modality: str) -> str | None:
    """``"image"`` or ``"audio"`` when :func:`create_app` serves ``model`` as a media model,
    None for a chat model. A media backend, catalog member or reference carries its own."""
    if modality not in MODALITIES:
        raise ConfigurationError(f"modality must be one of {', '.join(map(repr, MODALITIES))}; "
                                 f"got {modality!r}.")
    own = (model.ref.modality if isinstance(model, MediaBackend) else model.modality
           if isinstance(model, MediaRef) else model.info.modality
           if isinstance(model, MediaModel) else None)
    if own is not None and modality not in ("chat", own):
        raise ConfigurationError(f"{model} is an {own} model, not an {modality} one: leave "
                                 f"modality out or set it to {own!r}.")
    if own is None and modality != "chat" and model is None:
        raise ConfigurationError(f"Serving an {modality} model needs the model, e.g. "
                                 "'hf:<folder or hub id>': there is no local default for it.")
    return own or (None if modality == "chat" else modality)


def media_backend(model: Any, kind: str, settings: dict[str, Any]) -> tuple[MediaBackend,
                                                                             dict[str, Any]]:
    """The image or audio backend for ``model`` and the generation defaults among
    ``settings`` (the rest are the provider's settings)."""
    from modelplug.media import create_audio_backend, create_image_backend, split_generation_kwargs

    if isinstance(model, MediaBackend):
        defaults = {k: v for k, v in settings.items() if v is not None}
        unknown = sorted(set(defaults) - set(model.PARAMS))
        if unknown:
            raise ConfigurationError(
                f"A ready {kind} backend takes generation defaults ({list(model.PARAMS)}), not "
                f"{unknown}: give provider settings to create_{kind}_backend() instead.")
        return model, defaults
    defaults, provider = split_generation_kwargs(kind, model, settings)  # type: ignore[arg-type]
    create = create_image_backend if kind == "image" else create_audio_backend
    return create(model, **provider), {k: v for k, v in defaults.items() if v is not None}


def add_media_routes(app: FastAPI, backend: MediaBackend, defaults: dict[str, Any],
                     max_request_bytes: int) -> None:
    """An image model's ``POST /v1/images/generations`` or an audio model's ``POST
    /v1/audio/speech``, in OpenAI's shapes; the other generation routes answer 404 naming the
    one served here."""
    served, kind = str(backend.ref), backend.ref.modality
    route = IMAGES_ROUTE if kind == "image" else SPEECH_ROUTE
    extras = tuple(p for p in backend.PARAMS if p not in NOT_REQUEST_FIELDS)

    def generation_args(body: dict[str, Any], prompt_field: str,
                        fields: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
        prompt = body.get(prompt_field)
        if prompt is None:
            raise missing(prompt_field, f"Give the text to generate from in '{prompt_field}'.")
        if not isinstance(prompt, str) or not prompt.strip():
            raise invalid_type(prompt_field, prompt, "a non-empty string")
        known = (prompt_field, *fields, *extras, *UNUSED_FIELDS)
        unknown = [name for name in body if name not in known]
        if unknown:
            raise RequestError(f"Unrecognized request argument supplied: {unknown[0]!r}. The "
                               f"{kind} model {served!r} takes: {', '.join(known)}.",
                               unknown[0], "unknown_parameter")
        for name in extras:
            if name in MEDIA_PARAM_CHECKS:
                MEDIA_PARAM_CHECKS[name](body)
        return prompt, {**defaults, **{k: body[k] for k in extras if body.get(k) is not None}}

    if kind == "image":
        @app.post(IMAGES_ROUTE)
        async def images(request: Request) -> dict[str, Any]:
            body = await json_body(request, max_request_bytes)
            prompt, params = generation_args(body, "prompt", ("n", "size", "response_format",
                                                              "output_format"))
            check_int(body, "n", 1)
            count = body.get("n") or 1
            if count > MAX_IMAGES:
                raise RequestError(f"Invalid 'n': integer above maximum value. Expected a value "
                                   f"<= {MAX_IMAGES}, but got {count} instead.", "n",
                                   "integer_above_max_value")
            check_choice(body, "response_format", "b64_json", "images come back inline as "
                         "base64 PNG; this server keeps no files to link to")
            check_choice(body, "output_format", "png", "images are PNG")
            params.update(image_size(body.get("size")))
            pngs = await backend.agenerate(prompt, num_images=count, format="bytes", **params)
            return {"created": int(time.time()),
                    "data": [{"b64_json": base64.b64encode(png).decode()} for png in pngs]}
    else:
        @app.post(SPEECH_ROUTE)
        async def speech(request: Request) -> Response:
            body = await json_body(request, max_request_bytes)
            # 'voice' is required by OpenAI's API; a text-to-audio model has no voices.
            text, params = generation_args(body, "input", ("voice", "response_format", "speed"))
            check_choice(body, "response_format", "wav", "the model's audio comes back as WAV")
            check_number(body, "speed", 0.25, 4)
            speed = body.get("speed")
            if speed is not None and speed != 1:
                raise RequestError(f"Invalid 'speed': {shown(speed)}. The {kind} model "
                                   f"{served!r} generates at its own pace: leave 'speed' unset "
                                   "or 1 (a longer clip: 'duration_s').", "speed",
                                   "unsupported_value")
            [wav] = await backend.agenerate(text, format="bytes", **params)
            return Response(wav, media_type="audio/wav")

    async def elsewhere(request: Request) -> JSONResponse:
        return error_response(404, f"{request.url.path} is not served here: this server serves "
                              f"the {kind} model {served!r} at POST {route}.",
                              "invalid_request_error", code="unknown_url")

    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", IMAGES_ROUTE,
                 SPEECH_ROUTE):
        if path != route:
            app.add_api_route(path, elsewhere, methods=["POST"])


def check_string(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid_type(name, value, "a string")


def check_choice(body: dict[str, Any], name: str, only: str, why: str) -> None:
    value = body.get(name)
    if value is not None and value != only:
        raise RequestError(f"Invalid value for '{name}': {shown(value)}. This server supports "
                           f"only {only!r}: {why}.", name, "unsupported_value")


def image_size(size: Any) -> dict[str, int]:
    """``"WIDTHxHEIGHT"`` as width and height; None or ``"auto"``: the model's own size."""
    if size is None or size == "auto":
        return {}
    found = re.fullmatch(r"(\d{1,4})x(\d{1,4})", size, re.ASCII) if isinstance(size, str) else None
    width, height = (int(v) for v in found.groups()) if found else (0, 0)
    if not (0 < width <= 4096 and 0 < height <= 4096):
        raise RequestError(f"Invalid value for 'size': {shown(size)}. Give it as 'WIDTHxHEIGHT' "
                           "in pixels, each 1 to 4096 (e.g. '512x512'), or 'auto' for the "
                           "model's own size.", "size", "invalid_value")
    return {"width": width, "height": height}


# -- errors -------------------------------------------------------------------------------------


def error_response(status: int, message: str, type_: str, *, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}}, status_code=status)


def error_body(exc: Exception) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI error JSON for an exception raised while answering."""
    status = getattr(exc, "status_code", None)  # what the provider answered, if it did
    if not isinstance(status, int):
        if isinstance(exc, ModelPlugError) and isinstance(exc, ValueError):
            status = 400  # a request or setting that cannot work as given
        elif type(exc).__name__ == "RateLimitError":
            status = 429
        elif isinstance(exc, ModelPlugError) and exc.retryable:
            status = 503
        else:
            status = 500
    type_ = "invalid_request_error" if 400 <= status < 500 else "server_error"
    message = str(exc) or type(exc).__name__
    code = exc.code if isinstance(exc, RequestError) else type(exc).__name__
    return status, {"error": {"message": message, "type": type_,
                              "param": getattr(exc, "param", None), "code": code}}


def error_json(exc: Exception) -> JSONResponse:
    status, body = error_body(exc)
    return JSONResponse(body, status_code=status)


__all__ = ["API_KEY_ENV", "DEFAULT_MAX_REQUEST_BYTES", "RequestError", "create_app", "serve"]
