"""Unit tests: offline and without model weights. Only loopback sockets are allowed, and the
local-discovery probes are pointed at closed ports and empty folders."""

from __future__ import annotations

import pytest
from pytest_socket import enable_socket, socket_allow_hosts


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    socket_allow_hosts(["127.0.0.1", "localhost", "::1"], allow_unix_socket=True)
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
    monkeypatch.delenv("MODELPLUG_MODEL", raising=False)
    yield
    enable_socket()
