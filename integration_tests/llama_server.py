"""A real llama-server (llama.cpp's OpenAI- and Anthropic-compatible server) for the test run.

The binary is built once per machine by ``make llama-server`` (scripts/llama-server.sh) into
``$MODELPLUG_CACHE/bin``; ``make test`` depends on it. The server runs the SmolLM2 GGUF on
127.0.0.1 at a port picked here, for the whole session, and is stopped at the end. A missing
binary is a failure, not a skip: CI builds it, so its absence is a broken setup.

/v1/embeddings needs ``--embeddings`` (and ``--pooling mean``: SmolLM2 declares no pooling), an
option that changes how the server runs, so embeddings get a second server of their own, started
only when a test asks for it; the chat server runs with the plain options above.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fakes.server import free_port

STARTUP_TIMEOUT_S = 180


def llama_server_binary() -> Path:
    cache = Path(os.environ.get("MODELPLUG_CACHE", Path.home() / ".cache" / "modelplug"))
    return cache / "bin" / "llama-server"


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so a killed run leaves no server."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux/glibc: the fixture's own teardown still stops it
        pass


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):  # refused, or 503 while the model loads
        return False


@contextmanager
def run_llama_server(model: Path, *extra_args: str) -> Iterator[str]:
    """Start llama-server on 127.0.0.1 and yield its root URL once /health answers 200."""
    binary = llama_server_binary()
    if not binary.is_file():
        pytest.fail(
            f"llama-server is not built ({binary} does not exist). Run `make llama-server` "
            "(once per machine, about 12 minutes; `make test` does it).",
            pytrace=False,
        )
    for _attempt in range(3):  # another process may take the port between pick and bind
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tempfile.NamedTemporaryFile(
            prefix="llama-server-", suffix=".log", delete=False)
        cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
               "--jinja", "-c", "4096", *extra_args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while proc.poll() is None and not _healthy(url):
                if time.monotonic() > deadline:
                    pytest.fail(f"llama-server did not become healthy within "
                                f"{STARTUP_TIMEOUT_S} s; see {log.name}", pytrace=False)
                time.sleep(0.2)
            if proc.poll() is not None:
                output = Path(log.name).read_text(errors="replace")
                if "bind" in output.lower() and _attempt < 2:
                    continue
                pytest.fail(f"llama-server exited with code {proc.returncode}:\n"
                            f"{output[-3000:]}", pytrace=False)
            yield url
            return
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()


@pytest.fixture(scope="session")
def llama_server(smollm2_path: Path) -> Iterator[str]:
    """Root URL (``http://127.0.0.1:PORT``) of llama-server running SmolLM2 with --jinja."""
    with run_llama_server(smollm2_path) as url:
        yield url


@pytest.fixture(scope="session")
def llama_server_v1(llama_server: str) -> str:
    """The OpenAI-compatible base URL of :func:`llama_server`."""
    return f"{llama_server}/v1"


@pytest.fixture(scope="session")
def llama_server_embeddings(smollm2_path: Path) -> Iterator[str]:
    """OpenAI base URL of a second llama-server with /v1/embeddings (mean pooling)."""
    with run_llama_server(smollm2_path, "--embeddings", "--pooling", "mean") as url:
        yield f"{url}/v1"
