"""A loopback fake of OpenAI's chat-completions and embeddings APIs, for what llama-server
cannot show.

It replays the documented shapes: a ``chat.completion`` object for plain requests and, for
``"stream": true``, server-sent ``chat.completion.chunk`` events ending in ``data: [DONE]``, with
the usage chunk (empty ``choices``) last when ``stream_options.include_usage`` is set. Usage
carries ``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``
as the API documents them; reasoning deltas use the ``reasoning_content`` field of DeepSeek and
vLLM. Like the real API it refuses, with its error shape, requests it would refuse: a wrong or
missing bearer key (401), ``max_tokens`` or a non-default ``temperature`` on an o-series
reasoning model (400). Replies queued with ``fail`` answer a status code first (for the SDK's
retries). ``POST /v1/embeddings`` answers the documented ``list`` of ``embedding`` objects with a
small vector that depends only on the text, and refuses a missing model or input (400).

Tests queue replies with :meth:`FakeOpenAI.reply` / :meth:`FakeOpenAI.reply_stream` and read
what the SDK sent in :attr:`FakeOpenAI.requests`, :attr:`FakeOpenAI.headers` and
:attr:`FakeOpenAI.paths`.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "sk-test-key"
_O_SERIES = re.compile(r"^o\d")


def _error(status: int, message: str, kind: str, param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}}, status_code=status)


#: What the API documents for each message: its fields, its content part types, each part's
#: fields. Anything else is refused as the API refuses it (400, code unknown_parameter or
#: invalid_value, naming the path).
_MESSAGE_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "audio",
                   "function_call"}
_PART_TYPES = {"system": ("text",), "developer": ("text",), "tool": ("text",),
               "user": ("text", "image_url", "input_audio", "file"),
               "assistant": ("text", "refusal")}
_PART_FIELDS = {"text": {"type", "text"}, "image_url": {"type", "image_url"},
                "input_audio": {"type", "input_audio"}, "file": {"type", "file"},
                "refusal": {"type", "refusal"}}


def _check_messages(messages: Any) -> JSONResponse | None:
    if not isinstance(messages, list) or not messages:
        return _error(400, "'messages' must be a non-empty array.", "invalid_request_error",
                      "messages", "invalid_value")
    for i, message in enumerate(messages):
        for key in message:
            if key not in _MESSAGE_FIELDS:
                return _error(400, f"Unknown parameter: 'messages[{i}].{key}'.",
                              "invalid_request_error", f"messages[{i}].{key}",
                              "unknown_parameter")
        content = message.get("content")
        if not isinstance(content, list):
            continue
        allowed = _PART_TYPES.get(message.get("role"), ())
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in allowed:
                return _error(400, f"Invalid value: '{kind}'. Supported values are: "
                              + " and ".join(f"'{a}'" for a in allowed) + ".",
                              "invalid_request_error", f"messages[{i}].content[{j}].type",
                              "invalid_value")
            for key in part:
                if key not in _PART_FIELDS[kind]:
                    return _error(400, f"Unknown parameter: 'messages[{i}].content[{j}].{key}'.",
                                  "invalid_request_error", f"messages[{i}].content[{j}].{key}",
                                  "unknown_parameter")
    return None


class FakeOpenAI:
    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        #: The URL path of each request, in order ("/v1/chat/completions", "/v1/embeddings").
        self.paths: list[str] = []
        self._replies: deque[Any] = deque()
        #: With no reply queued: answer "echo: <last user message>" (in several deltas) instead of
        #: a 500, so concurrent callers each get an answer of their own.
        self.echo = False
        self._count = 0
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
        ])

    # -- scripting ------------------------------------------------------------------------------

    def reply(self, message: dict[str, Any], *, finish_reason: str = "stop",
              usage: dict[str, Any] | None = None) -> None:
        """Queue a non-streamed answer: an assistant message (content, tool_calls, extras)."""
        self._replies.append(("message", {"role": "assistant", **message}, finish_reason,
                              usage or usage_block()))

    def reply_stream(self, deltas: list[dict[str, Any]], *, finish_reason: str = "stop",
                     usage: dict[str, Any] | None = None) -> None:
        """Queue a streamed answer: the ``delta`` objects of successive chunks."""
        self._replies.append(("stream", deltas, finish_reason, usage or usage_block()))

    def fail(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``status`` (a server error to retry on)."""
        for _ in range(times):
            self._replies.append(("fail", status, None, None))

    # -- the endpoints --------------------------------------------------------------------------

    async def _received(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        """The request body, recorded, and the 401 answer when the key is wrong."""
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.paths.append(request.url.path)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return body, _error(401, "Incorrect API key provided.", "invalid_request_error",
                                code="invalid_api_key")
        return body, None

    async def _embeddings(self, request: Request) -> Response:
        body, refused = await self._received(request)
        if refused is not None:
            return refused
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not body.get("model"):
            return _error(400, "you must provide a model parameter", "invalid_request_error",
                          "model")
        if not texts or not all(isinstance(t, str) and t for t in texts):
            return _error(400, "'input' must be a non-empty string or array of non-empty "
                          "strings", "invalid_request_error", "input")
        return JSONResponse({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": embedding_of(text)}
                     for i, text in enumerate(texts)],
            "usage": {"prompt_tokens": sum(len(t.split()) for t in texts),
                      "total_tokens": sum(len(t.split()) for t in texts)},
        })

    async def _chat(self, request: Request) -> Response:
        body, refused = await self._received(request)
        if refused is not None:
            return refused
        refused = _check_messages(body.get("messages"))
        if refused is not None:
            return refused
        model = body.get("model", "")
        if _O_SERIES.match(model):
            if "max_tokens" in body:
                return _error(400, "Unsupported parameter: 'max_tokens' is not supported with "
                              "this model. Use 'max_completion_tokens' instead.",
                              "invalid_request_error", "max_tokens", "unsupported_parameter")
            if body.get("temperature", 1) != 1:
                return _error(400, f"Unsupported value: 'temperature' does not support "
                              f"{body['temperature']} with this model. Only the default (1) "
                              "value is supported.", "invalid_request_error", "temperature",
                              "unsupported_value")
        if not self._replies and self.echo:
            text = f"echo: {body['messages'][-1]['content']}"
            if body.get("stream"):
                self.reply_stream([{"content": p} for p in re.split(r"(?= )", text)])
            else:
                self.reply({"content": text})
        if not self._replies:
            return _error(500, "the fake has no reply queued for this request", "server_error")
        kind, payload, finish_reason, usage = self._replies.popleft()
        if kind == "fail":
            # retry-after-ms keeps the SDK's backoff short; it is part of OpenAI's API.
            return JSONResponse({"error": {"message": "The server had an error.",
                                           "type": "server_error", "param": None,
                                           "code": None}},
                                status_code=payload, headers={"retry-after-ms": "10"})
        self._count += 1
        ident = f"chatcmpl-fake{self._count}"
        if kind == "message":
            if not body.get("stream"):
                return JSONResponse({
                    "id": ident, "object": "chat.completion", "created": 1_700_000_000,
                    "model": model, "system_fingerprint": "fp_fake",
                    "choices": [{"index": 0, "message": {"refusal": None, **payload},
                                 "logprobs": None, "finish_reason": finish_reason}],
                    "usage": usage,
                })
        include_usage = (body.get("stream_options") or {}).get("include_usage", False)
        deltas = payload if kind == "stream" else [payload]

        def events() -> Any:
            base = {"id": ident, "object": "chat.completion.chunk", "created": 1_700_000_000,
                    "model": model, "system_fingerprint": "fp_fake"}
            first = {"role": "assistant", "content": ""}
            for delta in [first, *deltas]:
                chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": None}]}
                if include_usage:
                    chunk["usage"] = None
                yield f"data: {json.dumps(chunk)}\n\n"
            last = {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                         "finish_reason": finish_reason}]}
            yield f"data: {json.dumps(last)}\n\n"
            if include_usage:
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        if not body.get("stream"):
            return _error(500, "a streamed reply was queued for a non-streamed request",
                          "server_error")
        return StreamingResponse(events(), media_type="text/event-stream")


def embedding_of(text: str) -> list[float]:
    """The fake's vector for ``text``: four numbers that only the text decides."""
    return [float(len(text)), float(sum(map(ord, text)) % 97), float(text.count(" ")), 1.0]


def usage_block(prompt: int = 12, completion: int = 7, cached: int = 0,
           reasoning: int = 0, audio_in: int = 0, audio_out: int = 0) -> dict[str, Any]:
    """OpenAI's usage object: the details count parts of prompt/completion tokens."""
    return {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": audio_in},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": audio_out,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }

