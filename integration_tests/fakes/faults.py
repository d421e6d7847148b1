"""Fault injection in front of the wire fakes: an ASGI wrapper that, per request, answers an HTTP
error in the provider's own error shape (500, 503, 429 with Retry-After), hangs past the client's
timeout, resets the TCP connection, sends malformed JSON, drops a stream midway, or trickles the
real answer out a few bytes at a time.

Faults come from a queue (:meth:`FaultInjector.inject`) or from a function of the request body
(:attr:`FaultInjector.choose`, for concurrent load); a request with no fault reaches the wrapped
fake unchanged. :func:`serve` starts a fake behind an injector on a loopback port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fakes.server import LoopbackServer

#: Wire flavours: how each API shapes an error body and a streamed answer.
FLAVOURS = ("openai", "anthropic", "ollama")


@dataclass(frozen=True)
class Fault:
    """One injected failure. ``kind``: status, hang, reset, malformed, drop or trickle."""

    kind: str
    status: int = 500
    retry_after: int | None = None
    #: hang: seconds to stall; trickle: seconds between pieces.
    seconds: float = 0.0
    #: drop: body messages of the real answer passed through before the cut.
    after: int = 1
    #: trickle: bytes per piece.
    size: int = 3

    def __str__(self) -> str:
        if self.kind == "status":
            return f"status-{self.status}" + ("-retry-after" if self.retry_after else "")
        return self.kind


def status(code: int, retry_after: int | None = None) -> Fault:
    return Fault("status", status=code, retry_after=retry_after)


def _error_body(flavour: str, code: int) -> dict[str, Any]:
    message = {429: "Rate limit reached for requests. Please retry later.",
               500: "The server had an error while processing your request.",
               503: "The engine is currently overloaded, please try again later."}.get(
        code, f"HTTP {code}")
    if flavour == "anthropic":
        kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(code, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if flavour == "ollama":
        return {"error": message}
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def _malformed(flavour: str, stream: bool) -> tuple[str, bytes]:
    """A 200 answer whose JSON is cut short: (content type, body)."""
    if not stream:
        return "application/json", b'{"id": "broken", "choices": [{"index": 0, "message": {'
    if flavour == "anthropic":
        return "text/event-stream", (b'event: message_start\ndata: {"type": "message_start", '
                                     b'"message": {"id": \n\n')
    if flavour == "ollama":
        return "application/x-ndjson", b'{"model": "qwen3:8b", "message": {"role": \n'
    return "text/event-stream", b'data: {"id": "chatcmpl-broken", "choices": [{"delta": \n\n'


class FaultInjector:
    """ASGI app: ``app`` behind a fault plan. ``flavour`` picks the error and stream shapes."""

    def __init__(self, app: Any, flavour: str) -> None:
        assert flavour in FLAVOURS, flavour
        self.app = app
        self.flavour = flavour
        self.plan: deque[Fault | None] = deque()
        #: When set, decides each request's fault from its JSON body (the queue is not used).
        self.choose: Callable[[dict[str, Any]], Fault | None] | None = None
        #: (fault or None, request body) for every request, in arrival order.
        self.seen: list[tuple[Fault | None, dict[str, Any]]] = []
        self.server: LoopbackServer | None = None

    def inject(self, *faults: Fault | None) -> None:
        """Queue faults for the next requests (None: that request goes through untouched)."""
        self.plan.extend(faults)

    def reset(self) -> None:
        self.plan.clear()
        self.seen.clear()
        self.choose = None

    # -- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
        is_chat = scope["path"].endswith(("/chat/completions", "/messages", "/api/chat"))
        fault = None
        if is_chat:
            fault = self.choose(body) if self.choose else (self.plan.popleft() if self.plan
                                                          else None)
            self.seen.append((fault, body))
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:  # the body was read; now wait for the client to go away
                await asyncio.Event().wait()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        if fault is None:
            return await self.app(scope, replay, send)
        stream = bool(body.get("stream", self.flavour == "ollama"))  # Ollama streams by default
        if fault.kind == "status":
            headers = [(b"content-type", b"application/json")]
            if fault.retry_after is not None:
                headers.append((b"retry-after", str(fault.retry_after).encode()))
            await _respond(send, fault.status, headers,
                           json.dumps(_error_body(self.flavour, fault.status)).encode())
        elif fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            await _respond(send, 504, [(b"content-type", b"application/json")],
                           json.dumps(_error_body(self.flavour, 504)).encode())
        elif fault.kind == "reset":
            self._abort(scope, rst=True)
        elif fault.kind == "malformed":
            kind, data = _malformed(self.flavour, stream)
            await _respond(send, 200, [(b"content-type", kind.encode())], data)
        elif fault.kind == "drop":
            await self.app(scope, replay, self._dropping(scope, send, fault.after))
        elif fault.kind == "trickle":
            await self.app(scope, replay, _trickling(send, fault.size, fault.seconds))
        else:
            raise ValueError(f"unknown fault {fault.kind!r}")

    def _abort(self, scope: dict[str, Any], *, rst: bool) -> None:
        """Close the client's connection now: with a TCP reset (RST), or a plain FIN."""
        assert self.server is not None, "serve() sets the server the connections belong to"
        for protocol in list(self.server.server.server_state.connections):
            if getattr(protocol, "client", None) == tuple(scope["client"]):
                transport = protocol.transport
                sock = transport.get_extra_info("socket")
                if rst and sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()

    def _dropping(self, scope: dict[str, Any], send: Any, after: int) -> Any:
        """A send that passes ``after`` body messages (or half of a single body), then cuts."""
        count, cut = 0, False

        async def dropping(message: dict[str, Any]) -> None:
            nonlocal count, cut
            if cut:
                return
            if message["type"] != "http.response.body":
                return await send(message)
            if not message.get("more_body"):  # one whole body: send half of it
                data = message.get("body", b"")
                await send({"type": "http.response.body", "body": data[:len(data) // 2],
                            "more_body": True})
            else:
                await send(message)
                count += 1
                if count < after:
                    return
            await asyncio.sleep(0.02)  # let the client read what was sent before the cut
            cut = True
            self._abort(scope, rst=False)

        return dropping


async def _respond(send: Any, code: int, headers: list[tuple[bytes, bytes]], data: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _trickling(send: Any, size: int, seconds: float) -> Any:
    """A send that delivers every body in ``size``-byte pieces, ``seconds`` apart."""

    async def trickling(message: dict[str, Any]) -> None:
        if message["type"] != "http.response.body":
            return await send(message)
        data, more = message.get("body", b""), message.get("more_body", False)
        for i in range(0, len(data), size):
            await send({"type": "http.response.body", "body": data[i:i + size],
                        "more_body": True})
            await asyncio.sleep(seconds)
        await send({"type": "http.response.body", "body": b"", "more_body": more})

    return trickling


def serve(app: Any, flavour: str) -> tuple[FaultInjector, LoopbackServer]:
    """``app`` behind a :class:`FaultInjector`, started on a loopback port."""
    injector = FaultInjector(app, flavour)
    server = LoopbackServer(injector, log_level="critical")
    injector.server = server
    return injector, server.start()
