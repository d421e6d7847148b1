"""A loopback fake of OpenAI's chat-completions and embeddings APIs, for what llama-server
cannot show.

It replays the documented shapes: a ``chat.completion`` object for plain requests and, for
``"stream": true``, server-sent ``chat.completion.chunk`` events ending in ``data: [DONE]``, with
the usage chunk (empty ``choices``) last when ``stream_options.include_usage`` is set. Usage
carries ``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``
as the API documents them; reasoning deltas use the ``reasoning_content`` field of DeepSeek and
vLLM. Like the real API it refuses, with its error shape, requests it would refuse: a wrong or
missing bearer key (401), ``max_tokens`` or a non-default ``temperature`` on an o-series
reasoning model, and everything :func:`check_chat` lists (400). ``"stream": true`` is answered as
server-sent events and anything else (``false`` or absent) as one JSON body. Replies queued with
``fail`` answer a status code first (for the SDK's retries). ``POST /v1/embeddings`` answers the
documented ``list`` of ``embedding`` objects with a small vector that depends only on the text,
and refuses a missing model or input and unknown parameters (400).

The fake is api.openai.com by default: a top-level parameter the API does not document is
refused. An OpenAI-compatible server documents parameters of its own (vLLM's
``chat_template_kwargs``, say); ``FakeOpenAI(extra_fields=...)`` names those it takes.

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


def _chat_parameters() -> frozenset[str]:
    """The request parameters of chat completions as the official SDK documents them."""
    from openai.types.chat.completion_create_params import (
        CompletionCreateParamsBase,
        CompletionCreateParamsStreaming,
    )

    return frozenset(CompletionCreateParamsBase.__annotations__) | frozenset(
        CompletionCreateParamsStreaming.__annotations__)


#: Top-level parameters of ``POST /v1/chat/completions`` and ``POST /v1/embeddings``.
CHAT_FIELDS = _chat_parameters()
EMBEDDING_FIELDS = frozenset({"input", "model", "dimensions", "encoding_format", "user"})
#: Parameters vLLM (and SGLang) take on top of OpenAI's, as their OpenAI-compatible server
#: documents them ("Extra parameters"); llama-server's ``cache_prompt`` likewise.
COMPAT_FIELDS = frozenset({"chat_template_kwargs", "add_generation_prompt",
                           "continue_final_message", "top_k", "min_p", "repetition_penalty",
                           "guided_json", "guided_choice", "guided_regex", "cache_prompt"})

#: What the API documents for each message: its roles, fields, content part types, each part's
#: fields. Anything else is refused as the API refuses it (400, code unknown_parameter or
#: invalid_value, naming the path).
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_MESSAGE_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "audio",
                   "function_call"}
_PART_TYPES = {"system": ("text",), "developer": ("text",), "tool": ("text",),
               "user": ("text", "image_url", "input_audio", "file"),
               "assistant": ("text", "refusal")}
_PART_FIELDS = {"text": {"type", "text"}, "image_url": {"type", "image_url"},
                "input_audio": {"type", "input_audio"}, "file": {"type", "file"},
                "refusal": {"type", "refusal"}}


class Refusal(Exception):
    """A request the API refuses: raised while checking, answered as its 400 error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code

    def response(self) -> JSONResponse:
        return _error(400, str(self), "invalid_request_error", self.param, self.code)


def _missing(param: str) -> Refusal:
    return Refusal(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _unknown_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:  # the API names them all, with neither param nor code
        raise Refusal(f"Unrecognized request argument supplied: {', '.join(unknown)}")


def check_chat(body: dict[str, Any], extra_fields: frozenset[str] = frozenset()) -> None:
    """Raise :class:`Refusal` for what ``POST /v1/chat/completions`` refuses in ``body``: a
    missing model or messages, a parameter it does not document (beyond ``extra_fields``),
    a message of an unknown role or with an unknown field or content part, a ``tool`` message
    that answers no tool call of the assistant message before it, an assistant tool call that no
    tool message answers, ``tool_choice`` or ``parallel_tool_calls`` without ``tools``, a
    ``tool_choice`` naming a function that is not in ``tools``, and ``stream_options`` on a
    request that does not stream."""
    if not body.get("model"):
        raise Refusal("you must provide a model parameter")
    if "messages" not in body:
        raise _missing("messages")
    _unknown_fields(body, CHAT_FIELDS | extra_fields)
    _check_messages(body["messages"])
    _check_tools(body)
    if "stream_options" in body and not body.get("stream"):
        raise Refusal("The 'stream_options' parameter is only allowed when 'stream' is "
                      "enabled.", "stream_options")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise Refusal(f"Invalid type for 'messages': expected an array, but got "
                      f"{type(messages).__name__} instead.", "messages", "invalid_type")
    if not messages:
        raise Refusal("Invalid 'messages': empty array. Expected an array with minimum length "
                      "1, but got an empty array instead.", "messages", "empty_array")
    for i, message in enumerate(messages):
        _check_message(i, message)
    _check_tool_answers(messages)


def _check_message(i: int, message: Any) -> None:
    if not isinstance(message, dict):
        raise Refusal(f"Invalid type for 'messages[{i}]': expected an object, but got "
                      f"{type(message).__name__} instead.", f"messages[{i}]", "invalid_type")
    if "role" not in message:
        raise _missing(f"messages[{i}].role")
    role = message["role"]
    if role not in _ROLES:
        raise Refusal(f"Invalid value: '{role}'. Supported values are: "
                      + ", ".join(f"'{r}'" for r in _ROLES[:-1]) + f", and '{_ROLES[-1]}'.",
                      f"messages[{i}].role", "invalid_value")
    for key in message:
        if key not in _MESSAGE_FIELDS:
            raise Refusal(f"Unknown parameter: 'messages[{i}].{key}'.", f"messages[{i}].{key}",
                          "unknown_parameter")
    # Only an assistant message may leave out its content (when it calls tools instead).
    if role != "assistant" and message.get("content") is None:
        raise _missing(f"messages[{i}].content")
    if role == "tool" and "tool_call_id" not in message:
        raise _missing(f"messages[{i}].tool_call_id")
    content = message.get("content")
    if not isinstance(content, list):
        return
    allowed = _PART_TYPES.get(role, ())
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise Refusal(f"Invalid value: '{kind}'. Supported values are: "
                          + " and ".join(f"'{a}'" for a in allowed) + ".",
                          f"messages[{i}].content[{j}].type", "invalid_value")
        for key in part:
            if key not in _PART_FIELDS[kind]:
                raise Refusal(f"Unknown parameter: 'messages[{i}].content[{j}].{key}'.",
                              f"messages[{i}].content[{j}].{key}", "unknown_parameter")


def _check_tool_answers(messages: list[dict[str, Any]]) -> None:
    """Tool messages answer the tool calls of the assistant message right before them (after
    its other answers), each call gets its answer before the conversation goes on."""
    pending: dict[str, int] = {}  # tool_call_id -> index of the assistant message that made it
    answerable = False  # the message before is an assistant tool call or one of its answers
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "tool":
            if not answerable:
                raise Refusal("Invalid parameter: messages with role 'tool' must be a response "
                              "to a preceeding message with 'tool_calls'.",
                              f"messages.[{i}].role")
            if pending.pop(message["tool_call_id"], None) is None:
                raise Refusal(f"Invalid parameter: 'tool_call_id' of "
                              f"'{message['tool_call_id']}' not found in 'tool_calls' of "
                              "previous message.", f"messages.[{i}].tool_call_id")
            continue
        if pending:
            first = min(pending.values())
            raise Refusal("An assistant message with 'tool_calls' must be followed by tool "
                          "messages responding to each 'tool_call_id'. The following "
                          f"tool_call_ids did not have response messages: "
                          f"{', '.join(pending)}", f"messages.[{first}].role")
        calls = message.get("tool_calls") if role == "assistant" else None
        answerable = bool(calls)
        pending = {call.get("id"): i for call in calls or []}
    if pending:
        first = min(pending.values())
        raise Refusal("An assistant message with 'tool_calls' must be followed by tool messages "
                      "responding to each 'tool_call_id'. The following tool_call_ids did not "
                      f"have response messages: {', '.join(pending)}", f"messages.[{first}].role")


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    names = []
    for i, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            raise _missing(f"tools[{i}].function")
        if not function.get("name"):
            raise _missing(f"tools[{i}].function.name")
        names.append(function["name"])
    for param in ("tool_choice", "parallel_tool_calls"):
        if param in body and not tools:
            raise Refusal(f"Invalid value for '{param}': '{param}' is only allowed when "
                          "'tools' are specified.", param)
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice not in ("none", "auto", "required"):
        raise Refusal(f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and "
                      "'required'.", "tool_choice", "invalid_value")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            raise Refusal(f"Invalid value for 'tool_choice': no function named '{name}' was "
                          "specified in the 'tools' parameter.", "tool_choice")


class FakeOpenAI:
    def __init__(self, api_key: str = API_KEY,
                 extra_fields: frozenset[str] = frozenset()) -> None:
        self.api_key = api_key
        #: Top-level parameters taken beyond OpenAI's own (:data:`COMPAT_FIELDS` for a vLLM).
        self.extra_fields = frozenset(extra_fields)
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
        try:
            _unknown_fields(body, EMBEDDING_FIELDS | self.extra_fields)
        except Refusal as refusal:
            return refusal.response()
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
        try:
            check_chat(body, self.extra_fields)
        except Refusal as refusal:
            return refusal.response()
        model = body["model"]
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

