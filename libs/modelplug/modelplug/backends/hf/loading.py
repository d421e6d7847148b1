"""Loading an hf: model: locating its folder (a local path, or a hub id in the local cache),
refusing pickle weights, loading model, tokenizer and processor once into the process-wide cache
(:mod:`modelplug.weights`), and the loaded model's view of its vocabulary for constrained
decoding (:mod:`modelplug.backends.structured`).

Loading never downloads unless ``allow_download=True``, loads safetensors only and passes
``trust_remote_code`` only when the caller does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelplug.backends import structured
from modelplug.backends.base import DEFAULT_MAX_TOKENS
from modelplug.backends.hf.tool_formats import TOOL_CALL_FORMATS, detect_tool_call_format
from modelplug.errors import ConfigurationError, ModelNotFoundError
from modelplug.weights import LoadedModel, get_or_load

if TYPE_CHECKING:
    from modelplug.profile import Profile

DTYPES = ("auto", "float32", "float16", "bfloat16")
_DEVICE_RE = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)$")
#: from_pretrained settings this backend owns; model_kwargs may not override them.
_OWNED_KWARGS = ("trust_remote_code", "local_files_only", "use_safetensors")
#: Weight files that unpickle when loaded (and so can run code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Default context length when the config names none.
DEFAULT_CONTEXT = 4096


@dataclass
class HFModel:
    """What one cache entry holds: the model, its tokenizer (and processor), grammar view."""

    model: Any
    tokenizer: Any
    processor: Any
    eos_ids: frozenset[int]
    pad_id: int
    vocab_size: int
    context: int
    #: The output budget of a request that sets none: the model's generation_config.json
    #: ``max_new_tokens``, else :data:`~modelplug.backends.base.DEFAULT_MAX_TOKENS`.
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    _lltokenizer: Any = None
    #: Held for every use of the tokenizer: a fast tokenizer used from two threads while one
    #: call changes its padding or truncation fails ("Already borrowed").
    text_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _grammar_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def device(self) -> Any:
        return self.model.device

    def lltokenizer(self) -> Any:
        """llguidance's view of the tokenizer (built once)."""
        with self._grammar_lock:
            if self._lltokenizer is None:
                self._lltokenizer = structured.hf_tokenizer(self.tokenizer, self.vocab_size,
                                                            sorted(self.eos_ids))
        return self._lltokenizer

    def constraint(self, grammar: str,
                   reasoning: structured.Reasoning | None = None) -> structured.Constraint:
        """A request's grammar state (``grammar``: :func:`structured.compile_grammar`'s, for
        ``reasoning`` when the answer is preceded by reasoning)."""
        return structured.Constraint(self.lltokenizer(), grammar, self.vocab_size, reasoning)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        with self.text_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=skip_special)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        with self.text_lock:
            return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def has_safetensors(names: Iterable[str], folder: Path, ref: str, *, convert: str) -> bool:
    """Whether the weight files ``names`` (of ``folder``) include safetensors ones.

    Pickle-only weights are refused (:class:`ConfigurationError`: unpickling can run arbitrary
    code), naming the files and ``convert``, the call that rewrites them as safetensors. False
    means neither kind is there: the caller says what the folder lacks. Shared by the hf chat
    backend and the diffusers/audio backends.
    """
    names = list(names)
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return True
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ConfigurationError(
            f"'{ref}' has only pickle weights ({', '.join(pickles)}) in {folder}. modelplug loads "
            "safetensors only, because unpickling can run arbitrary code. Convert them once in "
            f"a trusted environment ({convert}) or use a revision that ships .safetensors files."
        )
    return False


def check_weights(folder: Path, ref: str) -> None:
    """Refuse a folder without safetensors weights (pickle can run code when loaded)."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    if has_safetensors(names, folder, ref,
                       convert="model.save_pretrained(folder, safe_serialization=True)"):
        return
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"{folder} is not a transformers model folder (no config.json). Pass the folder "
            "that holds config.json and the .safetensors weights."
        )
    raise ModelNotFoundError(
        f"'{ref}': {folder} has no .safetensors weights. Pass a complete model folder."
    )


class HFLoading:
    """The backend's settings, files and loading (mixed into :class:`HFBackend`)."""

    ref: Any
    settings: dict[str, Any]
    _source: str

    if TYPE_CHECKING:
        def profile(self) -> Profile: ...  # the backend's

    # -- settings and locating -----------------------------------------------------------------

    def _validate_settings(self) -> None:
        s = self.settings
        fmt = s.get("tool_call_format")
        if fmt is not None and (not isinstance(fmt, str) or fmt.upper() not in TOOL_CALL_FORMATS):
            raise ConfigurationError(
                f"tool_call_format={fmt!r} is not a known format. Use one of "
                f"{list(TOOL_CALL_FORMATS)}, or leave it out to take it from the catalog or the "
                "chat template."
            )
        dtype = s.get("torch_dtype")
        if isinstance(dtype, str) and dtype not in DTYPES:
            raise ConfigurationError(
                f"torch_dtype={dtype!r} is not supported. Use one of {list(DTYPES)} or a "
                "torch.dtype."
            )
        device = s.get("device")
        if device is not None and not (isinstance(device, str) and _DEVICE_RE.match(device)):
            raise ConfigurationError(
                f"device={device!r} is not a device. Use 'cpu', 'cuda', 'cuda:N', 'mps', or "
                "leave it out to pick CUDA, then MPS, then CPU."
            )
        if not isinstance(s.get("chat_template") or "", str):
            raise ConfigurationError(
                f"chat_template must be a Jinja chat template (a str); got "
                f"{s['chat_template']!r}.")
        structured.thinking_budget(s)
        model_kwargs = s.get("model_kwargs") or {}
        if not isinstance(model_kwargs, dict):
            raise ConfigurationError(
                f"model_kwargs must be a dict of from_pretrained arguments; got {model_kwargs!r}."
            )
        owned = [k for k in _OWNED_KWARGS if k in model_kwargs]
        if owned:
            raise ConfigurationError(
                f"model_kwargs may not set {owned}: weights load as safetensors only, downloads "
                "need allow_download=True and remote code needs trust_remote_code=True, both "
                "passed to the model itself."
            )

    @property
    def allow_download(self) -> bool:
        return bool(self.settings.get("allow_download", False))

    def _locate(self) -> str:
        """A local folder (absolute path) or a hub id found in the local cache."""
        model_id = self.ref.model_id
        path = Path(model_id).expanduser()
        if path.is_dir():
            check_weights(path, str(self.ref))
            return str(path.resolve())
        if path.is_file():
            hint = (f" For a GGUF file use 'llamacpp:{model_id}'." if path.suffix == ".gguf"
                    else "")
            raise ConfigurationError(
                f"'{self.ref}' names a file; hf: loads a model folder (config.json and "
                f"*.safetensors) or a hub id.{hint}"
            )
        if model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or "\\" in model_id:
            raise ModelNotFoundError(
                f"Model folder {model_id!r} does not exist. Pass the folder that holds "
                "config.json and the .safetensors weights, or a hub id like 'org/name'."
            )
        if self.allow_download:
            return model_id
        config = self._cached_file(model_id, "config.json")
        if config is None:
            raise ModelNotFoundError(
                f"'{self.ref}' is not in the local Hugging Face cache and downloads are off. "
                f"Download it once (`hf download {model_id}`), pass allow_download=True, or "
                "pass the path of a local model folder."
            )
        check_weights(Path(config).parent, str(self.ref))
        return model_id

    def _cached_file(self, repo_id: str, filename: str) -> str | None:
        from huggingface_hub import try_to_load_from_cache

        revision = (self.settings.get("model_kwargs") or {}).get("revision")
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        return found if isinstance(found, str) else None

    def _local_file(self, name: str) -> Path | None:
        if os.path.isdir(self._source):
            path = Path(self._source) / name
            return path if path.is_file() else None
        found = self._cached_file(self._source, name)
        return Path(found) if found else None

    def _read_json(self, name: str) -> dict[str, Any]:
        path = self._local_file(name)
        if path is None:
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def chat_template(self) -> str:
        """The chat template(s) as text: the ``chat_template`` setting, else read from the
        files (no tokenizer load)."""
        if self.settings.get("chat_template"):
            return self.settings["chat_template"]
        parts = []
        template = self._read_json("tokenizer_config.json").get("chat_template")
        if isinstance(template, str):
            parts.append(template)
        elif isinstance(template, list):
            parts.extend(t.get("template", "") for t in template if isinstance(t, dict))
        for name in ("chat_template.jinja", "chat_template.json"):
            path = self._local_file(name)
            if path is not None:
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)

    def tool_call_format(self) -> str | None:
        """From ``tool_call_format=``, the catalog, or the chat template, in that order."""
        given = self.settings.get("tool_call_format")
        if given:
            return given.upper()
        info = self.ref.info
        if info is not None and info.tool_call_format:
            return info.tool_call_format
        return detect_tool_call_format(self.chat_template())

    @property
    def _has_processor(self) -> bool:
        return self._local_file("preprocessor_config.json") is not None

    # -- loading --------------------------------------------------------------------------------

    def _device(self) -> str:
        device = self.settings.get("device")
        if device:
            return device
        import torch

        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"

    def _dtype(self, device: str) -> Any:
        import torch

        dtype = self.settings.get("torch_dtype")
        if dtype is None:  # half precision is slow on CPU; the checkpoint's own dtype elsewhere
            return torch.float32 if device == "cpu" else "auto"
        return getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype

    def _load_key(self) -> tuple:
        s = self.settings
        extra = tuple(sorted((k, repr(v)) for k, v in (s.get("model_kwargs") or {}).items()))
        return ("hf", self._source, s.get("device"), repr(s.get("torch_dtype")),
                bool(s.get("trust_remote_code")), extra)

    def _loaded(self) -> LoadedModel:
        return get_or_load(self._load_key(), self._load)

    def load(self) -> None:
        self._loaded()

    def _load(self) -> HFModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        s = self.settings
        model_kwargs = dict(s.get("model_kwargs") or {})
        common: dict[str, Any] = {"local_files_only": not self.allow_download,
                                  "trust_remote_code": bool(s.get("trust_remote_code", False))}
        if "revision" in model_kwargs:
            common["revision"] = model_kwargs["revision"]
        device = self._device()
        try:
            # Loading bars only where someone watches: a terminal, or progress=True.
            with progress_bars(show_progress(s), libraries=("transformers",)):
                processor = None
                if self._has_processor:
                    from transformers import AutoModelForImageTextToText, AutoProcessor

                    processor = AutoProcessor.from_pretrained(self._source, **common)
                    tokenizer = getattr(processor, "tokenizer", None) or \
                        AutoTokenizer.from_pretrained(self._source, **common)
                    model_class: Any = AutoModelForImageTextToText
                else:
                    tokenizer = AutoTokenizer.from_pretrained(self._source, **common)
                    model_class = AutoModelForCausalLM
                model_kwargs.setdefault("dtype", self._dtype(device))
                model = model_class.from_pretrained(self._source, use_safetensors=True,
                                                    **{**model_kwargs, **common})
        except OSError as exc:
            raise ModelNotFoundError(
                f"Could not load '{self.ref}' ({exc}). Check the folder or hub id; downloads "
                f"are {'on' if self.allow_download else 'off (allow_download=True turns them on)'}"
                "; only safetensors weights are loaded."
            ) from exc
        if "device_map" not in model_kwargs:
            model.to(device)
        model.eval()
        if tokenizer.pad_token_id is None:  # batching pads; the end token is a safe pad
            tokenizer.pad_token = tokenizer.eos_token
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        vocab = model.get_output_embeddings().weight.shape[0]
        return HFModel(model=model, tokenizer=tokenizer, processor=processor,
                       eos_ids=frozenset(eos_ids), pad_id=tokenizer.pad_token_id,
                       vocab_size=vocab,
                       context=self.profile().max_input_tokens or DEFAULT_CONTEXT,
                       default_max_tokens=getattr(model.generation_config, "max_new_tokens",
                                                  None) or DEFAULT_MAX_TOKENS)


def show_progress(settings: dict[str, Any]) -> bool:
    """Whether loading (and generation) progress bars show: ``progress=True/False`` when given,
    else only when stderr is a terminal (a pipe or a log file gets no bar)."""
    given = settings.get("progress")
    return bool(given) if given is not None else sys.stderr.isatty()


@contextlib.contextmanager
def progress_bars(enabled: bool, libraries: tuple[str, ...] = ("diffusers", "transformers")
                  ) -> Iterator[None]:
    """The libraries' progress bars (transformers' "Loading weights" among them) on or off for
    one load, then as they were."""
    import importlib
    import importlib.util

    libs = [importlib.import_module(f"{name}.utils.logging") for name in libraries
            if importlib.util.find_spec(name) is not None]
    before = [lib.is_progress_bar_enabled() for lib in libs]
    for lib in libs:
        (lib.enable_progress_bar if enabled else lib.disable_progress_bar)()
    try:
        yield
    finally:
        for lib, was in zip(libs, before, strict=True):
            (lib.enable_progress_bar if was else lib.disable_progress_bar)()


__all__ = ["DEFAULT_CONTEXT", "DTYPES", "HFLoading", "HFModel", "check_weights", "has_safetensors",
           "progress_bars", "show_progress"]
