"""A loopback fake of the Gemini API's ``{v1,v1beta}/models/{model}:generateContent``, for image
generation through the google-genai SDK.

It answers in the documented shape: ``candidates[].content.parts[]`` with ``inlineData``
(``mimeType``, base64 ``data``) for an image and ``text`` otherwise, ``finishReason`` and
``usageMetadata``. Like the real API it refuses a wrong or missing ``x-goog-api-key`` (400
``INVALID_ARGUMENT``, "API key not valid") and a model it does not serve (404 ``NOT_FOUND``),
and, as 400 ``INVALID_ARGUMENT``, what :func:`check` lists: no ``contents``, a field the
request type does not have (the API parses JSON strictly against its proto: "Unknown name"), a
role other than user and model, a content without parts.
Every image it returns is a fresh solid-colour PNG whose colour counts the requests, so tests can
tell the N answers of ``num_images=N`` apart. Replies queued with :meth:`reply_text` answer text
only (what a refusal looks like); :meth:`fail` answers a status code first (for the SDK's
retries).
"""

from __future__ import annotations

import base64
import io
from collections import deque
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_KEY = "AIza-test-key"
IMAGE_MODELS = ("gemini-2.5-flash-image", "gemini-3-pro-image-preview")


def _status(code: int, status: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "status": status}},
                        status_code=code)


#: Fields of GenerateContentRequest and of its GenerationConfig (the JSON form takes the proto's
#: lowerCamelCase names and the snake_case ones alike).
REQUEST_FIELDS = frozenset({"model", "contents", "tools", "toolConfig", "safetySettings",
                            "systemInstruction", "generationConfig", "cachedContent"})
GENERATION_FIELDS = frozenset({
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
    "responseModalities", "candidateCount", "maxOutputTokens", "temperature", "topP", "topK",
    "seed", "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs",
    "enableEnhancedCivicAnswers", "speechConfig", "thinkingConfig", "imageConfig",
    "mediaResolution"})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _unknown(fields: dict[str, Any], known: frozenset[str]) -> str | None:
    return next((name for name in fields if _camel(name) not in known), None)


def check(body: dict[str, Any]) -> str | None:
    """The message of the 400 INVALID_ARGUMENT that generateContent answers to ``body``, or
    None when the API would take it."""
    name = _unknown(body, REQUEST_FIELDS)
    if name:
        return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    config = body.get("generationConfig", body.get("generation_config")) or {}
    name = _unknown(config, GENERATION_FIELDS)
    if name:
        return (f'Invalid JSON payload received. Unknown name "{name}" at '
                "'generation_config': Cannot find field.")
    contents = body.get("contents")
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified\n"
    for i, content in enumerate(contents):
        if content.get("role", "user") not in ("user", "model"):
            return "Please use a valid role: user, model."
        if not content.get("parts"):
            return (f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be "
                    "empty.\n")
    return None


def png(color: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


class FakeGemini:
    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self._replies: deque[Any] = deque()
        self.count = 0
        self.app = Starlette(routes=[
            Route("/{version}/models/{model}:generateContent", self._generate, methods=["POST"]),
        ])

    def reply_text(self, text: str, finish_reason: str = "STOP") -> None:
        self._replies.append(("text", text, finish_reason))

    def fail(self, status: int, times: int = 1) -> None:
        for _ in range(times):
            self._replies.append(("fail", status, None))

    async def _generate(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.paths.append(request.url.path)
        self.headers.append(dict(request.headers))
        if request.headers.get("x-goog-api-key") != self.api_key:
            return _status(400, "INVALID_ARGUMENT",
                           "API key not valid. Please pass a valid API key.")
        model, version = request.path_params["model"], request.path_params["version"]
        if version not in ("v1", "v1beta"):
            return _status(404, "NOT_FOUND", f"API version {version} does not exist.")
        if model not in IMAGE_MODELS:
            return _status(404, "NOT_FOUND", f"models/{model} is not found for API version "
                           f"{version}, or is not supported for generateContent.")
        problem = check(body)
        if problem:
            return _status(400, "INVALID_ARGUMENT", problem)
        reply = self._replies.popleft() if self._replies else ("image", None, "STOP")
        kind, value, finish = reply
        if kind == "fail":
            return _status(value, "UNAVAILABLE", "The model is overloaded. Please try later.")
        self.count += 1
        if kind == "text":
            parts = [{"text": value}]
        else:
            size = _size(body)
            data = png((self.count * 40 % 256, 10, 200), size)
            parts = [{"inlineData": {"mimeType": "image/png",
                                     "data": base64.b64encode(data).decode("ascii")}}]
        return JSONResponse({
            "candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": finish, "index": 0}],
            "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 1290,
                              "totalTokenCount": 1297},
            "modelVersion": model,
        })


def _size(body: dict[str, Any]) -> tuple[int, int]:
    """A small image whose shape follows ``imageConfig.aspectRatio`` ("W:H")."""
    ratio = ((body.get("generationConfig") or {}).get("imageConfig") or {}).get("aspectRatio")
    if not ratio:
        return (16, 16)
    w, _, h = ratio.partition(":")
    return (int(w) * 4, int(h) * 4)
