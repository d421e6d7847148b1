"""A loopback OpenAI chat-completions server that answers at once, run in its own process.

Raw asyncio HTTP/1.1 with keep-alive and pre-encoded answers, so the server's own work is small
and, being another process, never counts in the client's CPU time. ``POST .../chat/completions``
answers a ``chat.completion`` object, or with ``"stream": true`` the server-sent
``chat.completion.chunk`` events of the same answer (role chunk, one chunk per token, finish
chunk, usage chunk, ``[DONE]``). Anything else is a 404. Only 127.0.0.1 is ever bound.

    with loopback_server() as url:      # "http://127.0.0.1:PORT/v1"
        ...

``loopback_server(service_ms=50, slots=4)`` models a replica of bounded capacity instead (as
``llama-server -np 4``): each answer holds one of ``slots`` for ``service_ms`` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator

TOKENS = ["The", " capital", " of", " France", " is", " Paris", "."]
MODEL = "bench-model"
_USAGE = {"prompt_tokens": 14, "completion_tokens": len(TOKENS), "total_tokens": 14 + len(TOKENS),
          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
          "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                        "accepted_prediction_tokens": 0,
                                        "rejected_prediction_tokens": 0}}
_BASE = {"id": "chatcmpl-bench", "created": 1_700_000_000, "model": MODEL,
         "system_fingerprint": "fp_bench"}


def _completion() -> bytes:
    return json.dumps({**_BASE, "object": "chat.completion", "choices": [{
        "index": 0, "message": {"role": "assistant", "content": "".join(TOKENS),
                                "refusal": None},
        "logprobs": None, "finish_reason": "stop"}], "usage": _USAGE}).encode()


def _stream() -> bytes:
    base = {**_BASE, "object": "chat.completion.chunk"}
    deltas = [{"role": "assistant", "content": ""}] + [{"content": t} for t in TOKENS]
    events = [{**base, "choices": [{"index": 0, "delta": d, "logprobs": None,
                                    "finish_reason": None}]} for d in deltas]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "stop"}]})
    events.append({**base, "choices": [], "usage": _USAGE})
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return body.encode()


def _response(body: bytes, content_type: str, status: str = "200 OK") -> bytes:
    head = (f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\nconnection: keep-alive\r\n\r\n")
    return head.encode() + body


PLAIN = _response(_completion(), "application/json")
STREAM = _response(_stream(), "text/event-stream; charset=utf-8")
NOT_FOUND = _response(b'{"error": {"message": "not found", "type": "invalid_request_error"}}',
                      "application/json", "404 Not Found")


#: (service seconds, slots) when the replica models a bounded capacity; set by _main.
_CAPACITY: tuple[float, asyncio.Semaphore] | None = None


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            target = head.split(b" ", 2)[1]
            if _CAPACITY is not None and target.endswith(b"/chat/completions"):
                seconds, slots = _CAPACITY
                async with slots:
                    await asyncio.sleep(seconds)
            if not target.endswith(b"/chat/completions"):
                writer.write(NOT_FOUND)
            elif b'"stream":true' in body.replace(b" ", b""):
                writer.write(STREAM)
            else:
                writer.write(PLAIN)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _main() -> None:
    global _CAPACITY
    if len(sys.argv) == 3:
        _CAPACITY = (float(sys.argv[1]) / 1000, asyncio.Semaphore(int(sys.argv[2])))
    server = await asyncio.start_server(_serve, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def loopback_server(service_ms: float = 0, slots: int = 0) -> Iterator[str]:
    """Start the server in a child process; yields its base URL (``.../v1``). With ``slots``:
    at most that many answers at once, each after ``service_ms``."""
    capacity = [str(service_ms), str(slots)] if slots else []
    proc = subprocess.Popen([sys.executable, __file__, *capacity], stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"the loopback server did not start (said {line!r})")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for a server started by a script)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refused_url() -> str:
    """A loopback URL whose port was just free: connecting to it is refused at once."""
    return f"http://127.0.0.1:{free_port()}/v1"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
