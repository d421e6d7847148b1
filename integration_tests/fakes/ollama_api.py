"""A loopback fake of Ollama's native API: /api/chat, /api/generate, /api/embed, /api/show,
/api/tags.

Shapes follow Ollama's API documentation: /api/chat answers one JSON object for
``"stream": false`` and NDJSON (``application/x-ndjson``) otherwise, where every line carries a
``message`` fragment (``thinking`` first, then ``content``, tool calls whole in a line of their
own, arguments as objects and no ids) and the last line has ``done: true``, ``done_reason`` and
the counts (``prompt_eval_count``, ``eval_count``, durations). An unknown model is a 404 with
``{"error": "model \\"x\\" not found, try pulling it first"}``. /api/generate streams the same
way with ``response`` fragments instead of ``message``, and answers one JSON object for
``"stream": false`` too.

Like Ollama it refuses with a 400 and ``{"error": "..."}``: a request without a model, a
``format`` that is neither ``"json"`` nor a JSON schema object, and a request asking for a
capability the model lacks (/api/show's ``capabilities``): chat or generate on an embedding
model, ``tools`` on a model without ``tools``, ``think`` on one without ``thinking``. Ollama
ignores fields it does not know (its request types are decoded leniently), so the fake does too.

Tests queue replies with :meth:`FakeOllama.reply` and read what the SDK sent in
:attr:`FakeOllama.requests` (``(path, body)`` pairs).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

CREATED_AT = "2025-06-01T12:00:00.000000Z"

#: Models the fake "has pulled", with what /api/show reports for them.
MODELS: dict[str, dict[str, Any]] = {
    "qwen3:8b": {"family": "qwen3", "parameter_size": "8.2B", "context_length": 40960,
                 "capabilities": ["completion", "tools", "thinking"]},
    "llava:7b": {"family": "llama", "parameter_size": "7B", "context_length": 32768,
                 "capabilities": ["completion", "vision"]},
    "nomic-embed-text:latest": {"family": "nomic-bert", "parameter_size": "137M",
                                "context_length": 2048, "capabilities": ["embedding"]},
}


def fake_embedding(text: str) -> list[float]:
    """A deterministic 4-d vector per text, so tests can check order and content."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255, 6) for b in digest[:4]]


def _not_found(model: str) -> JSONResponse:
    return JSONResponse({"error": f'model "{model}" not found, try pulling it first'},
                        status_code=404)


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def check(body: dict[str, Any], *, chat: bool) -> JSONResponse | None:
    """Ollama's answer to a /api/chat or /api/generate request it refuses, or None."""
    model = body.get("model")
    if not model:
        return _bad_request("model is required")
    if model not in MODELS:
        return _not_found(model)
    fmt = body.get("format")
    if fmt not in (None, "", "json") and not isinstance(fmt, dict):
        return _bad_request('invalid format: expected "json" or a valid JSON schema')
    capabilities = MODELS[model]["capabilities"]
    if "completion" not in capabilities:
        return _bad_request(f'"{model}" does not support {"chat" if chat else "generate"}')
    if chat and body.get("tools") and "tools" not in capabilities:
        return _bad_request(f'"{model}" does not support tools')
    if body.get("think") not in (None, False) and "thinking" not in capabilities:
        return _bad_request(f'"{model}" does not support thinking')
    return None


def _details(name: str) -> dict[str, Any]:
    m = MODELS[name]
    return {"parent_model": "", "format": "gguf", "family": m["family"], "families": [m["family"]],
            "parameter_size": m["parameter_size"], "quantization_level": "Q4_K_M"}


class FakeOllama:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        #: The HTTP headers of each /api/chat request, in order.
        self.headers: list[dict[str, str]] = []
        self._replies: deque[dict[str, Any]] = deque()
        self.app = Starlette(routes=[
            Route("/api/chat", self._chat, methods=["POST"]),
            Route("/api/generate", self._generate, methods=["POST"]),
            Route("/api/embed", self._embed, methods=["POST"]),
            Route("/api/show", self._show, methods=["POST"]),
            Route("/api/tags", self._tags, methods=["GET"]),
        ])

    def reply(self, content: str = "", *, thinking: str = "",
              tool_calls: list[dict[str, Any]] | None = None, done_reason: str = "stop",
              prompt_eval_count: int = 12, eval_count: int = 7) -> None:
        """Queue the next /api/chat answer. tool_calls: [{"name": ..., "arguments": {...}}]."""
        self._replies.append({"content": content, "thinking": thinking,
                              "tool_calls": tool_calls or [], "done_reason": done_reason,
                              "prompt_eval_count": prompt_eval_count, "eval_count": eval_count})

    def sent(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.requests if p == path]

    @property
    def last_chat(self) -> dict[str, Any]:
        return self.sent("/api/chat")[-1]

    # -- endpoints ------------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(("/api/chat", body))
        self.headers.append(dict(request.headers))
        refused = check(body, chat=True)
        if refused is not None:
            return refused
        if not self._replies:
            return JSONResponse({"error": "the test queued no reply"}, status_code=500)
        script = self._replies.popleft()
        final = {"model": body["model"], "created_at": CREATED_AT, "done": True,
                 "done_reason": script["done_reason"], "total_duration": 812_000_000,
                 "load_duration": 2_000_000, "prompt_eval_count": script["prompt_eval_count"],
                 "prompt_eval_duration": 100_000_000, "eval_count": script["eval_count"],
                 "eval_duration": 700_000_000}
        calls = [{"function": {"name": c["name"], "arguments": c["arguments"]}}
                 for c in script["tool_calls"]]
        if not body.get("stream", True):  # the API streams unless told not to
            message: dict[str, Any] = {"role": "assistant", "content": script["content"]}
            if script["thinking"]:
                message["thinking"] = script["thinking"]
            if calls:
                message["tool_calls"] = calls
            return JSONResponse({**final, "message": message})
        return StreamingResponse(_ndjson(body["model"], script, calls, final),
                                 media_type="application/x-ndjson")

    async def _generate(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(("/api/generate", body))
        refused = check(body, chat=False)
        if refused is not None:
            return refused
        if not self._replies:
            return JSONResponse({"error": "the test queued no reply"}, status_code=500)
        script = self._replies.popleft()
        text = script["content"]
        parts = [{"model": body["model"], "created_at": CREATED_AT, "response": text[i:i + 6],
                  "done": False} for i in range(0, len(text), 6)]
        parts.append({"model": body["model"], "created_at": CREATED_AT, "response": "",
                      "done": True, "done_reason": script["done_reason"],
                      "prompt_eval_count": script["prompt_eval_count"],
                      "eval_count": script["eval_count"], "total_duration": 812_000_000})
        if not body.get("stream", True):  # one object: the whole text on the final line's fields
            return JSONResponse({**parts[-1], "response": text})

        async def ndjson():
            for part in parts:
                yield (json.dumps(part) + "\n").encode()
        return StreamingResponse(ndjson(), media_type="application/x-ndjson")

    async def _embed(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(("/api/embed", body))
        if not body.get("model"):
            return _bad_request("model is required")
        if body["model"] not in MODELS:
            return _not_found(body["model"])
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return JSONResponse({"model": body["model"],
                             "embeddings": [fake_embedding(t) for t in texts],
                             "total_duration": 14_143_917, "load_duration": 1_019_500,
                             "prompt_eval_count": sum(len(t.split()) for t in texts)})

    async def _show(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(("/api/show", body))
        name = body.get("model")
        if name not in MODELS:
            return _not_found(name)
        m = MODELS[name]
        return JSONResponse({
            "modelfile": f"FROM {name}\n", "parameters": "temperature 0.6",
            "template": "{{ .Prompt }}", "details": _details(name),
            "model_info": {"general.architecture": m["family"],
                           "general.parameter_count": 8_190_735_360,
                           f"{m['family']}.context_length": m["context_length"]},
            "capabilities": m["capabilities"], "modified_at": "2025-05-01T10:00:00.0Z",
        })

    async def _tags(self, request: Request) -> Response:
        self.requests.append(("/api/tags", {}))
        return JSONResponse({"models": [
            {"name": name, "model": name, "modified_at": "2025-05-01T10:00:00.0Z",
             "size": 5_200_000_000, "digest": hashlib.sha256(name.encode()).hexdigest(),
             "details": _details(name)} for name in MODELS]})


async def _ndjson(model: str, script: dict[str, Any], calls: list[dict[str, Any]],
                  final: dict[str, Any]):
    def line(message: dict[str, Any]) -> bytes:
        part = {"model": model, "created_at": CREATED_AT,
                "message": {"role": "assistant", "content": "", **message}, "done": False}
        return (json.dumps(part) + "\n").encode()

    text, thinking = script["content"], script["thinking"]
    for i in range(0, len(thinking), 6):
        yield line({"thinking": thinking[i:i + 6]})
    for i in range(0, len(text), 6):
        yield line({"content": text[i:i + 6]})
    if calls:
        yield line({"tool_calls": calls})
    yield (json.dumps({**final, "message": {"role": "assistant", "content": ""}}) + "\n").encode()
