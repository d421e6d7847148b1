"""``modelplug serve`` as a real process: a client that closes its stream frees the model's slot,
SIGTERM / Ctrl-C mid-stream stops the server promptly, and a non-loopback bind without an API
key refuses to start (before binding anything). Every server here runs the in-process SmolLM2
GGUF; each test bounds its waits and stops its process in a ``finally``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fakes.server import free_port

from modelplug import ConfigurationError
from modelplug.server import API_KEY_ENV, is_loopback, serve

SERVED = "llamacpp:smollm2"
#: A question whose answer runs to the 400-token limit, so it is still generating when the test
#: acts on it.
LONG = {"model": SERVED, "max_tokens": 400, "temperature": 0, "stream": True,
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]}


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelplug.cli", "serve", SERVED, *args]


def env_without_key() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != API_KEY_ENV}


@contextlib.contextmanager
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """A ``modelplug serve`` process on a free loopback port, once its /health answers; killed
    on the way out if it still runs. Its output goes to a file (a full pipe would stall it)."""
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(serve_command("--port", str(port)), env=env_without_key(),
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"modelplug serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield proc, base, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def health(base: str) -> dict[str, Any]:
    return httpx.get(f"{base}/health", timeout=5).json()


def open_stream(base: str) -> Any:
    """A long streamed answer, two chunks of it read: the model is generating now."""
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)
    stream = client.chat.completions.create(**LONG)
    for _ in range(2):
        next(stream)
    return stream


def test_a_closed_stream_frees_its_slot(tmp_path: Path) -> None:
    with serving(tmp_path) as (_, base, _):
        stream = open_stream(base)
        try:
            during = health(base)
        finally:
            stream.close()  # the client goes away mid-answer
        if "running" not in during:
            pytest.skip("serving_stats not available yet (llamacpp is not on the scheduler)")
        assert during["running"] == 1
        deadline = time.monotonic() + 5
        while (after := health(base))["running"] != 0:
            assert time.monotonic() < deadline, f"the closed stream still runs: {after}"
            time.sleep(0.1)
        assert after["waiting"] == 0


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_mid_stream_stops_the_server_promptly(tmp_path: Path,
                                                       stop: signal.Signals) -> None:
    with serving(tmp_path) as (proc, base, log):
        stream = open_stream(base)
        try:
            proc.send_signal(stop)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pytest.fail(f"modelplug serve still ran 10 s after {stop.name}:\n"
                            f"{log.read_text()}")
        finally:
            stream.close()
        # uvicorn re-raises the signal once it has shut down cleanly
        assert proc.returncode in (0, -stop), log.read_text()
        assert "Application shutdown complete" in log.read_text()


def test_a_public_bind_without_a_key_refuses_to_start() -> None:
    done = subprocess.run(serve_command("--host", "0.0.0.0", "--port", str(free_port())),
                          env=env_without_key(), capture_output=True, text=True, timeout=60,
                          check=False)
    output = " ".join((done.stdout + done.stderr).split())  # the console wraps long lines
    assert done.returncode != 0
    assert "--api-key" in output and API_KEY_ENV in output and "--insecure-no-api-key" in output
    assert "Serving" not in output and "Uvicorn running" not in output  # nothing was bound


def test_serve_checks_the_bind_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(kwargs))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=r"insecure_no_api_key=True"):
        serve(SERVED, host="0.0.0.0")
    assert not started
    serve(SERVED, host="0.0.0.0", insecure_no_api_key=True)  # the explicit opt-out
    serve(SERVED, host="0.0.0.0", api_key="a-key")
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    serve(SERVED, host="::")
    serve(SERVED, host="localhost", api_key="")
    assert [s["host"] for s in started] == ["0.0.0.0", "0.0.0.0", "::", "localhost"]
    assert all(0 < s["timeout_graceful_shutdown"] <= 5 for s in started)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False),
    ("192.168.1.20", False), ("10.0.0.1", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
