"""A loopback HTTP server speaking OpenAI's chat-completions wire format, for failover tests.

The first path segment picks the behaviour, so one server serves every case:

- ``/status-<code>/v1/...``: answers ``<code>`` with an OpenAI-format error body (429, 500, 400,
  401, 404, 529, ...);
- ``/ok/v1/chat/completions``: a normal answer, JSON or SSE (``"stream": true``) with usage;
- ``/partial/v1/chat/completions``: one SSE chunk, then the connection is cut mid-stream.

Every request is recorded (mode, path, JSON body) so tests can see what each candidate received.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "Hello from the fake."

_ERRORS = {
    400: ("invalid_request_error", "Bad request: 'messages' is malformed."),
    401: ("authentication_error", "Incorrect API key provided."),
    403: ("permission_error", "Forbidden."),
    404: ("not_found_error", "The model 'x' does not exist."),
    429: ("rate_limit_error", "Rate limit reached. Try again later."),
    500: ("server_error", "The server had an error while processing your request."),
    503: ("server_error", "The engine is currently overloaded."),
    529: ("overloaded_error", "Overloaded."),
}


class StatusServer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {}
                mode = self.path.strip("/").split("/", 1)[0]
                server.requests.append((mode, self.path, body))
                if mode.startswith("status-"):
                    self._error(int(mode.removeprefix("status-")))
                elif mode == "ok":
                    self._ok(body)
                elif mode == "partial":
                    self._partial(body)
                else:
                    self._error(404)

            def do_GET(self) -> None:
                self._error(404)

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, code: int) -> None:
                kind, message = _ERRORS.get(code, ("error", f"HTTP {code}"))
                if "anthropic-version" in {k.lower() for k in self.headers}:
                    payload = {"type": "error", "error": {"type": kind, "message": message}}
                else:
                    payload = {"error": {"message": message, "type": kind, "code": None}}
                self._send(code, payload)

            def _ok(self, body: dict[str, Any]) -> None:
                model = body.get("model", "fake")
                if not body.get("stream"):
                    self._send(200, {
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                        "model": model,
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": ANSWER}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 4,
                                  "total_tokens": 9},
                    })
                    return
                self._sse_headers()
                for piece in ("Hello", " from", " the", " fake."):
                    self._chunk(_delta(model, {"content": piece}))
                self._chunk(_delta(model, {}, finish="stop"))
                self._chunk({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                             "created": 0, "model": model, "choices": [],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 4,
                                       "total_tokens": 9}})
                self._raw_chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")

            def _partial(self, body: dict[str, Any]) -> None:
                self._sse_headers()
                self._chunk(_delta(body.get("model", "fake"), {"content": "Hel"}))
                self.wfile.flush()
                # Cut the connection mid-stream: no terminating chunk.
                self.close_connection = True
                self.connection.shutdown(2)

            def _sse_headers(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

            def _chunk(self, payload: dict[str, Any]) -> None:
                self._raw_chunk(f"data: {json.dumps(payload)}\n\n".encode())

            def _raw_chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, mode: str) -> str:
        """The OpenAI-style base URL for a mode, e.g. ``url("status-429")``."""
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    def root(self, mode: str) -> str:
        """The base URL without ``/v1`` (what the Anthropic SDK takes)."""
        return f"http://127.0.0.1:{self.port}/{mode}"

    def seen(self, mode: str) -> list[dict[str, Any]]:
        """The JSON bodies received under a mode, in order."""
        return [body for m, _, body in self.requests if m == mode]

    def __enter__(self) -> StatusServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _delta(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
