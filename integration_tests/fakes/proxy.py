"""A loopback reverse proxy in front of a real server (llama-server), for fault injection.

:class:`Proxy` forwards every request to ``upstream`` through httpx and streams the answer back;
a server-sent-events answer goes back one event per ASGI body message, so that a
:class:`~fakes.faults.FaultInjector` wrapped around it (``Fault("drop", after=N)``) cuts a real
stream after exactly N events. :func:`serve_proxy` starts it behind an injector.
"""

from __future__ import annotations

from typing import Any

import httpx

from fakes.faults import FaultInjector, serve
from fakes.server import LoopbackServer

#: Hop-by-hop and length headers the proxy does not pass on (it re-frames the body).
_SKIPPED = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                      b"host"})


class Proxy:
    """ASGI app: each HTTP request sent on to ``upstream`` (a root URL), its answer streamed
    back, an event stream one event (``data: ...\\n\\n``) per body message."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        url = self.upstream + scope["path"] + (
            "?" + scope["query_string"].decode() if scope.get("query_string") else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _SKIPPED]
        async with httpx.AsyncClient(timeout=None) as client, client.stream(
                scope["method"], url, headers=headers, content=body) as answer:
            await send({"type": "http.response.start", "status": answer.status_code,
                        "headers": [(k.encode(), v.encode()) for k, v in answer.headers.items()
                                    if k.lower().encode() not in _SKIPPED]})
            events = "text/event-stream" in answer.headers.get("content-type", "")
            pending = b""
            async for data in answer.aiter_bytes():
                if not events:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    continue
                pending += data
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    await send({"type": "http.response.body", "body": event + b"\n\n",
                                "more_body": True})
            await send({"type": "http.response.body", "body": pending, "more_body": False})


def serve_proxy(upstream: str) -> tuple[FaultInjector, LoopbackServer]:
    """A :class:`Proxy` to ``upstream`` behind a fault injector (OpenAI error shapes), started
    on a loopback port."""
    return serve(Proxy(upstream), "openai")
