"""A loopback fake of Anthropic's Messages API (``POST /v1/messages``).

It replays the documented shapes: a ``message`` object for plain requests, and for
``"stream": true`` the documented SSE sequence (``message_start``, ``content_block_start`` /
``content_block_delta`` / ``content_block_stop`` per block, ``ping``, ``message_delta`` with the
stop reason and cumulative usage, ``message_stop``); without ``"stream": true`` one JSON
body. It also refuses, with the API's ``invalid_request_error`` shape (400), requests the real
API refuses: a missing model, messages or max_tokens, a top-level field the API does not document
("Extra inputs are not permitted"), a role other than user and assistant, a ``tool_result`` that
answers no ``tool_use`` of the assistant turn right before it, a ``tool_use`` left unanswered by
the next turn, results placed after other content, a ``tool_choice`` naming a tool not in
``tools``, a thinking budget not below max_tokens, forced tool use with thinking, sampling params
with adaptive thinking, and, with thinking on, a tool-calling assistant turn that does not start
with its thinking block, or a thinking block whose signature is missing or not the one this fake
gave out for that text. Consecutive messages of one role are one turn, as the API documents
("Consecutive user or assistant turns in your request will be combined into a single turn"), so
a backend bug shows up as a failed request and nothing the API accepts is refused.

Tests queue replies with :meth:`FakeAnthropic.reply` and read what the SDK sent in
:attr:`FakeAnthropic.requests`.
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

API_KEY = "test"


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}},
                        status_code=status)


class FakeAnthropic:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._replies: deque[dict[str, Any]] = deque()
        #: Signatures this fake gave out (in queued replies) -> the thinking text they sign;
        #: redacted_thinking data is its own signature.
        self.signatures: dict[str, str] = {}
        self._count = 0
        self.app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    # -- scripting ------------------------------------------------------------------------------

    def reply(self, content: list[dict[str, Any]], *, stop_reason: str = "end_turn",
              input_tokens: int = 10, output_tokens: int = 5,
              cache_creation_input_tokens: int | None = None,
              cache_read_input_tokens: int | None = None) -> None:
        """Queue the next answer: Anthropic content blocks (text, thinking, redacted_thinking,
        tool_use)."""
        for block in content:
            if block["type"] == "thinking":
                self.signatures[block["signature"]] = block["thinking"]
            elif block["type"] == "redacted_thinking":
                self.signatures[block["data"]] = ""
        usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        if cache_creation_input_tokens is not None:
            usage["cache_creation_input_tokens"] = cache_creation_input_tokens
        if cache_read_input_tokens is not None:
            usage["cache_read_input_tokens"] = cache_read_input_tokens
        self._replies.append({"content": content, "stop_reason": stop_reason, "usage": usage})

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]

    # -- the endpoint ---------------------------------------------------------------------------

    async def _messages(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        # Older SDKs send x-api-key, newer ones a bearer token; the API takes either.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if API_KEY not in (request.headers.get("x-api-key"), bearer):
            return _error(401, "authentication_error", "invalid x-api-key")
        problem = validate(body, self.signatures)
        if problem:
            return _error(400, "invalid_request_error", problem)
        if not self._replies:
            return _error(500, "api_error", "the test queued no reply for this request")
        script = self._replies.popleft()
        self._count += 1
        message = {
            "id": f"msg_fake{self._count:04d}", "type": "message", "role": "assistant",
            "model": body["model"], "content": script["content"],
            "stop_reason": script["stop_reason"], "stop_sequence": None,
            "usage": script["usage"],
        }
        if body.get("stream"):
            return StreamingResponse(_sse(message), media_type="text/event-stream")
        return JSONResponse(message, headers={"request-id": f"req_fake{self._count:04d}"})


#: Top-level request fields the Messages API documents; anything else is refused there.
FIELDS = frozenset({"model", "messages", "max_tokens", "system", "stream", "temperature", "top_p",
                    "top_k", "stop_sequences", "tools", "tool_choice", "thinking", "metadata",
                    "output_config", "service_tier", "cache_control", "container",
                    "inference_geo", "speed"})


def validate(body: dict[str, Any], signatures: dict[str, str] | None = None) -> str | None:
    """What the real API would refuse in ``body`` (a subset of its documented rules), or None.

    ``signatures`` (signature -> thinking text) are the ones the API gave out: a thinking block
    sent back must carry one of them, for its unmodified text."""
    for field in ("model", "messages", "max_tokens"):
        if field not in body:
            return f"{field}: Field required"
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        return f"{unknown[0]}: Extra inputs are not permitted"
    if not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool):
        return "max_tokens: Input should be a valid integer"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if "content" not in m:
            return f"messages.{i}.content: Field required"
        if isinstance(m["content"], list) and not m["content"]:
            return f"messages.{i}: all messages must have non-empty content"
    for i, m in enumerate(messages):
        for j, b in enumerate(_blocks(m)):
            key = {"tool_use": "id", "tool_result": "tool_use_id"}.get(b.get("type"))
            if key and not re.fullmatch(r"[a-zA-Z0-9_-]+", str(b.get(key))):
                return (f"messages.{i}.content.{j}.{b['type']}.{key}: String should match "
                        "pattern '^[a-zA-Z0-9_-]+$'")
    problem = _check_tool_results(messages)
    if problem:
        return problem
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if budget >= body["max_tokens"]:
            return "`max_tokens` must be greater than `thinking.budget_tokens`"
    if thinking.get("type") in ("enabled", "adaptive"):
        if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
            return "Thinking may not be enabled when tool_choice forces tool use."
    if thinking.get("type") == "adaptive" and ("temperature" in body or "top_p" in body):
        return "temperature and top_p may not be set with adaptive thinking"
    problem = _check_thinking_blocks(messages, signatures or {})
    if problem:
        return problem
    if thinking.get("type") in ("enabled", "adaptive"):
        problem = _check_tool_turn_starts_with_thinking(messages)
        if problem:
            return problem
    names = [t.get("name") for t in body.get("tools") or []]
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool" and choice.get("name") not in names:
        return f"tool_choice.name: no tool named {choice.get('name')!r}"
    return None


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    return content if isinstance(content, list) else [{"type": "text", "text": content}]


def _turns(messages: list[dict[str, Any]]) -> list[tuple[int, str, list[dict[str, Any]]]]:
    """The conversation's turns: consecutive messages of one role are one turn, as the API
    combines them. Each turn is (index of its first message, role, its blocks)."""
    turns: list[tuple[int, str, list[dict[str, Any]]]] = []
    for i, m in enumerate(messages):
        if turns and turns[-1][1] == m["role"]:
            turns[-1][2].extend(_blocks(m))
        else:
            turns.append((i, m["role"], list(_blocks(m))))
    return turns


def _check_tool_results(messages: list[dict[str, Any]]) -> str | None:
    """Every tool_use of an assistant turn is answered by a tool_result in the user turn right
    after it, where the results come before any other content; every tool_result answers a
    tool_use of the assistant turn right before it."""
    turns = _turns(messages)
    for n, (i, role, blocks) in enumerate(turns):
        if role != "user":
            continue
        before = turns[n - 1] if n else None
        asked = [b["id"] for b in before[2] if b.get("type") == "tool_use"] if before else []
        answered = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
        unexpected = [a for a in answered if a not in asked]
        if unexpected:
            return (f"messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {', '.join(unexpected)}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message.")
        unanswered = [a for a in asked if a not in answered]
        if unanswered:
            return (f"messages.{before[0]}: `tool_use` ids were found without `tool_result` "
                    f"blocks immediately after: {', '.join(unanswered)}. Each `tool_use` block "
                    "must have a corresponding `tool_result` block in the next message.")
        kinds = [b.get("type") == "tool_result" for b in blocks]
        if answered and kinds != sorted(kinds, reverse=True):
            return (f"messages.{i}.content: `tool_result` blocks must come first in the content "
                    "of a user message, before any other content.")
    return None


def _check_thinking_blocks(messages: list[dict[str, Any]], signatures: dict[str, str]) -> str | None:
    """Thinking blocks sent back must be the API's own: signed, text and signature unmodified."""
    for i, m in enumerate(messages):
        for j, b in enumerate(m["content"] if isinstance(m["content"], list) else []):
            where = f"messages.{i}.content.{j}"
            if b.get("type") == "thinking":
                if not isinstance(b.get("signature"), str) or not b["signature"]:
                    return f"{where}.thinking.signature: Field required"
                if signatures.get(b["signature"]) != b.get("thinking"):
                    return f"{where}: Invalid `signature` in `thinking` block"
            elif b.get("type") == "redacted_thinking" and b.get("data") not in signatures:
                return f"{where}: Invalid `data` in `redacted_thinking` block"
    return None


def _check_tool_turn_starts_with_thinking(messages: list[dict[str, Any]]) -> str | None:
    """With thinking on, the last assistant turn, if it called tools, starts with its thinking."""
    turns = [(i, m) for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        return None
    i, last = turns[-1]
    blocks = last["content"] if isinstance(last["content"], list) else [
        {"type": "text", "text": last["content"]}]
    if not any(b.get("type") == "tool_use" for b in blocks):
        return None
    first = blocks[0].get("type")
    if first in ("thinking", "redacted_thinking"):
        return None
    return (f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
            f"`{first}`. When `thinking` is enabled, a final `assistant` message must start "
            "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` "
            "blocks). We recommend you include thinking blocks from previous turns. To avoid "
            "this requirement, disable `thinking`.")


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _pieces(text: str, size: int = 7) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


async def _sse(message: dict[str, Any]):
    """The documented event sequence of one streamed message."""
    usage = message["usage"]
    start_usage = {k: v for k, v in usage.items() if k != "output_tokens"}
    start_usage["output_tokens"] = 1
    yield _event("message_start", {"type": "message_start", "message": {
        **message, "content": [], "stop_reason": None, "usage": start_usage}})
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": {"type": "text", "text": ""}})
            if index == 0:
                yield _event("ping", {"type": "ping"})
            for piece in _pieces(block["text"]):
                yield _event("content_block_delta", {"type": "content_block_delta",
                                                     "index": index,
                                                     "delta": {"type": "text_delta",
                                                               "text": piece}})
        elif kind == "thinking":
            yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": {"type": "thinking",
                                                                   "thinking": "",
                                                                   "signature": ""}})
            for piece in _pieces(block["thinking"]):
                yield _event("content_block_delta", {"type": "content_block_delta",
                                                     "index": index,
                                                     "delta": {"type": "thinking_delta",
                                                               "thinking": piece}})
            yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                 "delta": {"type": "signature_delta",
                                                           "signature": block["signature"]}})
        elif kind == "redacted_thinking":  # arrives whole: its data is encrypted
            yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": block})
        elif kind == "tool_use":
            yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": {**block, "input": {}}})
            for piece in ["", *_pieces(json.dumps(block["input"]), 5)]:
                yield _event("content_block_delta", {"type": "content_block_delta",
                                                     "index": index,
                                                     "delta": {"type": "input_json_delta",
                                                               "partial_json": piece}})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _event("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": message["stop_reason"],
                                             "stop_sequence": None},
                                   "usage": {"output_tokens": usage["output_tokens"]}})
    yield _event("message_stop", {"type": "message_stop"})
