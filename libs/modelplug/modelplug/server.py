"""An OpenAI-compatible HTTP server in front of any backend: ``modelplug serve MODEL``.

The server speaks the backend protocol directly. The neutral types already have OpenAI
chat-completions shapes, so a request body becomes a :class:`ChatRequest` with a few renames
and a response goes back the same way; any backend works, in-process models included. Any
OpenAI client (the ``openai`` SDK, ``ChatOpenAI``, another machine's ``ChatModelPlug`` with a
``llamaserver:``/``vllm:`` model and ``base_url=``) can then use it.

Routes: ``POST /v1/chat/completions`` (streaming as SSE ``data:`` lines ending with
``data: [DONE]``, tools, usage), ``POST /v1/embeddings``, ``GET /v1/models``. Errors come back
as OpenAI error JSON with a matching status code. When an API key is set (``api_key=`` or
``$MODELPLUG_SERVE_API_KEY``) every request must carry it as ``Authorization: Bearer <key>``.

Calls go through the backend's async methods: in-process backends run generation in a worker
thread and take turns on the model's lock (see :mod:`modelplug.weights`), so concurrent requests
queue instead of corrupting each other, and the event loop stays free.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import time
import uuid
from array import array
from collections.abc import AsyncIterator
from typing import Any

from modelplug.backends import Backend, create_backend
from modelplug.errors import ConfigurationError, MissingDependencyError, ModelPlugError
from modelplug.spec import ModelLike
from modelplug.types import ChatChunk, ChatRequest, ChatResponse, ToolCall, Usage

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "modelplug's server needs fastapi and uvicorn. Install them with: "
        "pip install 'modelplug[serve]'") from exc

API_KEY_ENV = "MODELPLUG_SERVE_API_KEY"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class RequestError(ConfigurationError):
    """A request body the server cannot turn into a backend request (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def create_app(model: ModelLike | Backend | None = None, *, api_key: str | None = None,
               **settings: Any) -> FastAPI:
    """The ASGI app serving ``model`` (a model string, catalog member, ready backend, or None
    for the local default). ``settings`` are the provider's settings, e.g. ``model_path=``.

    ``api_key`` defaults to ``$MODELPLUG_SERVE_API_KEY``; an empty key means no key is asked.
    """
    backend = model if isinstance(model, Backend) else create_backend(model, **settings)
    served = str(backend.ref)
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    app = FastAPI(title="modelplug", description=f"OpenAI-compatible API for {served}")
    app.state.backend = backend

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Any:
        if key:
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

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await json_body(request)
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
        return StreamingResponse(events, media_type="text/event-stream")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        body = await json_body(request)
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
          api_key: str | None = None, log_level: str = "info", **settings: Any) -> None:
    """Run the server with uvicorn until interrupted. Binds to loopback unless ``host`` says
    otherwise (``host="0.0.0.0"`` to accept other machines; set an API key then)."""
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("modelplug's server needs uvicorn. Install it with: "
                                     "pip install 'modelplug[serve]'") from exc
    uvicorn.run(create_app(model, api_key=api_key, **settings), host=host, port=port,
                log_level=log_level)


# -- OpenAI wire format <-> neutral types -----------------------------------------------------


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise RequestError(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    return body


def to_chat_request(body: dict[str, Any]) -> ChatRequest:
    """An OpenAI chat-completions request body as a :class:`ChatRequest`."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of messages.", param="messages")
    if body.get("n", 1) != 1:
        raise RequestError("Only n=1 is supported.", param="n")
    choice = body.get("tool_choice")
    if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}}
        choice = (choice.get("function") or {}).get("name")
        if not choice:
            raise RequestError("tool_choice must be 'auto', 'none', 'required' or "
                               "{'type': 'function', 'function': {'name': ...}}.",
                               param="tool_choice")
    stop = body.get("stop")
    # The reasoning switch as OpenAI-compatible local servers take it (and modelplug's own
    # openai_compat backend sends it), or OpenAI's reasoning_effort="none".
    switch = (body.get("chat_template_kwargs") or {}).get("enable_thinking")
    if switch is None and body.get("reasoning_effort") is not None:
        switch = body["reasoning_effort"] != "none"
    return ChatRequest(
        messages=messages,
        tools=body.get("tools") or None,
        tool_choice=choice,
        response_format=body.get("response_format"),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
        stop=[stop] if isinstance(stop, str) else stop,
        seed=body.get("seed"),
        reasoning=switch,
    )


def model_card(backend: Backend) -> dict[str, Any]:
    card: dict[str, Any] = {"id": str(backend.ref), "object": "model", "created": 0,
                            "owned_by": backend.ref.provider}
    context = backend.profile().max_input_tokens
    if context:
        card["context_length"] = context
    return card


def usage_json(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


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
    return status, {"error": {"message": message, "type": type_,
                              "param": getattr(exc, "param", None), "code": type(exc).__name__}}


def error_json(exc: Exception) -> JSONResponse:
    status, body = error_body(exc)
    return JSONResponse(body, status_code=status)


__all__ = ["API_KEY_ENV", "create_app", "serve"]
