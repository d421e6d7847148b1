"""In-process image and audio generation: ``hf:<diffusers folder or hub id>``.

Images run a diffusers pipeline: the class the catalog names, else the one in the folder's
``model_index.json``. Audio runs a diffusers audio pipeline (AudioLDM 2, Stable Audio) when the
folder is a diffusers pipeline, else transformers' text-to-audio pipeline (MusicGen and kin).

Loading is lazy (first generate), never downloads unless ``allow_download=True``, loads
safetensors only and never runs remote code. Pipelines live in :mod:`modelplug.weights`, shared
by every backend naming the same model and load settings; calls take turns on its lock.

Image placement follows :func:`modelplug.placement.plan_placement`: pinned to the freest GPU when
the model fits, else model CPU offload, else sequential CPU offload;
``model_kwargs={"device": ...}`` pins and ``model_kwargs={"device_map": ...}`` hands placement to
diffusers. Audio models are small and go on one device (the same ``device`` hint). Progress bars
(diffusers' and transformers' own, for loading and per denoising step) show when stderr is a
terminal; ``progress=True/False`` forces them on or off.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelplug.backends.hf.loading import has_safetensors, progress_bars, show_progress
from modelplug.errors import ConfigurationError, ModelNotFoundError, UnsupportedCapabilityError
from modelplug.media import AudioBackend, ImageBackend, MediaBackend
from modelplug.placement import (
    Placement,
    fallback_device,
    free_gpu_memory,
    module_bytes,
    plan_placement,
)
from modelplug.weights import LoadedModel, get_or_load

logger = logging.getLogger("modelplug")

_DEVICE_RE = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)$")
DTYPES = ("auto", "float32", "float16", "bfloat16")
#: from_pretrained settings this backend owns; model_kwargs may not set them.
_OWNED = ("use_safetensors", "local_files_only", "trust_remote_code", "custom_pipeline")


@dataclass
class _Loaded:
    """One cache entry: the pipeline, where it went, and the derived img2img pipeline."""

    pipe: Any
    placement: Placement
    kind: str = "diffusers"  # or "transformers"
    _img2img: Any = None

    def img2img(self) -> Any:
        """The pipeline that takes ``image=``: this one if it does, else one derived from it
        (sharing its components, no second load)."""
        if "image" in _call_params(self.pipe):
            return self.pipe
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            try:
                self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
            except (ValueError, KeyError) as exc:
                raise UnsupportedCapabilityError(
                    f"{type(self.pipe).__name__} has no image-to-image counterpart in diffusers, "
                    "so reference_image= cannot be used with it. Use an img2img-capable model "
                    "(Stable Diffusion, SDXL, SD3, FLUX) or drop reference_image.") from exc
            self._img2img.set_progress_bar_config(**getattr(self.pipe, "_progress_bar_config",
                                                            {}))
        return self._img2img


class _HFMedia(MediaBackend):
    """Settings, locating, loading and placement shared by the image and audio backends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._validate_settings()
        self._source, self._diffusers = self._locate()

    # -- settings ---------------------------------------------------------------------------

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self.settings.get("model_kwargs") or {})

    @property
    def allow_download(self) -> bool:
        return bool(self.settings.get("allow_download", False))

    @property
    def progress(self) -> bool:
        return show_progress(self.settings)

    def _validate_settings(self) -> None:
        kwargs = self.settings.get("model_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ConfigurationError(
                f"model_kwargs must be a dict of from_pretrained arguments (plus 'device' or "
                f"'device_map'); got {kwargs!r}.")
        owned = [k for k in _OWNED if k in kwargs]
        if owned:
            raise ConfigurationError(
                f"model_kwargs may not set {owned}: pipelines load as safetensors only, never "
                "run remote code, and download only with allow_download=True.")
        device = kwargs.get("device")
        if device is not None and not (isinstance(device, str) and _DEVICE_RE.match(device)):
            raise ConfigurationError(
                f"model_kwargs['device']={device!r} is not a device. Use 'cpu', 'cuda', "
                "'cuda:N', 'mps', or leave it out for memory-aware placement.")
        if device is not None and kwargs.get("device_map") is not None:
            raise ConfigurationError(
                "model_kwargs sets both 'device' (pin to one device) and 'device_map' (let "
                "diffusers/accelerate place components). Pass one of them.")
        dtype = self.settings.get("torch_dtype")
        if isinstance(dtype, str) and dtype not in DTYPES:
            raise ConfigurationError(
                f"torch_dtype={dtype!r} is not supported. Use one of {list(DTYPES)} or a "
                "torch.dtype.")

    # -- locating ---------------------------------------------------------------------------

    def _locate(self) -> tuple[str, bool]:
        """(local folder or cached hub id, whether it is a diffusers pipeline)."""
        model_id = self.ref.model_id
        path = Path(model_id).expanduser()
        if path.is_dir():
            return str(path.resolve()), _check_folder(path, str(self.ref))
        if model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or "\\" in model_id:
            raise ModelNotFoundError(
                f"Model folder {model_id!r} does not exist. Pass a diffusers pipeline folder "
                "(model_index.json) or a model folder (config.json), or a hub id 'org/name'.")
        if self.allow_download:
            info = self.ref.info
            return model_id, bool(info and info.pipeline_class) or self.ref.modality == "image"
        from huggingface_hub import try_to_load_from_cache

        revision = self.model_kwargs.get("revision")
        for name, is_diffusers in (("model_index.json", True), ("config.json", False)):
            found = try_to_load_from_cache(model_id, name, revision=revision)
            if isinstance(found, str):
                _check_folder(Path(found).parent, str(self.ref))
                return model_id, is_diffusers
        raise ModelNotFoundError(
            f"'{self.ref}' is not in the local Hugging Face cache and downloads are off. Download "
            f"it once (`hf download {model_id}`), pass allow_download=True, or pass the path of "
            "a local folder.")

    # -- loading ----------------------------------------------------------------------------

    def _dtype(self, device: str | None) -> Any:
        import torch

        given = self.settings.get("torch_dtype")
        if given is not None:
            return given if not isinstance(given, str) or given == "auto" \
                else getattr(torch, given)
        if device is None or device == "cpu":  # half precision is slow (or missing) on CPU
            return torch.float32
        return torch.float16 if device == "mps" else torch.bfloat16

    def _load_key(self) -> tuple:
        extra = tuple(sorted((k, repr(v)) for k, v in self.model_kwargs.items()))
        return ("hf-" + self.ref.modality, self._source, self._pipeline_class_name(),
                repr(self.settings.get("torch_dtype")), extra)

    def _loaded(self) -> LoadedModel:
        return get_or_load(self._load_key(), self._load)

    def load(self) -> None:
        self._loaded()

    def _pipeline_class_name(self) -> str | None:
        info = self.ref.info
        return info.pipeline_class if info is not None else None

    def _load_diffusers(self, single_device: bool) -> _Loaded:
        import diffusers

        kwargs = self.model_kwargs
        device, device_map = kwargs.pop("device", None), kwargs.pop("device_map", None)
        free = [] if device is not None or device_map is not None else free_gpu_memory()
        # Load where the weights are measured: the CPU, unless pinned or mapped.
        load_on = device if device is not None else (
            "cuda" if free or device_map is not None else fallback_device())
        name = self._pipeline_class_name() or "DiffusionPipeline"
        cls = getattr(diffusers, name, None)
        if cls is None:
            raise ConfigurationError(
                f"diffusers {diffusers.__version__} has no pipeline class {name!r} (from the "
                "catalog). Upgrade diffusers: pip install -U 'modelplug[diffusers]'.")
        if device_map is not None:
            kwargs["device_map"] = device_map
        with progress_bars(self.progress):
            try:
                pipe = cls.from_pretrained(self._source, dtype=self._dtype(load_on),
                                           use_safetensors=True,
                                           local_files_only=not self.allow_download, **kwargs)
            except OSError as exc:
                raise ModelNotFoundError(
                    f"Could not load '{self.ref}' ({exc}). Check the folder or hub id; only "
                    "safetensors weights are loaded"
                    f"{'' if self.allow_download else ' and downloads are off'}.") from exc
        modules = [m for m in pipe.components.values() if hasattr(m, "parameters")]
        sizes = [module_bytes(m) for m in modules] or [0]
        if single_device and device is None and device_map is None:
            device = f"cuda:{max(range(len(free)), key=free.__getitem__)}" if free else None
        placement = plan_placement(sum(sizes), max(sizes), free, device=device,
                                   device_map=device_map, fallback_device=fallback_device())
        _place(pipe, placement)
        logger.info("Placed '%s': %s on %s (%s).", self.ref, placement.strategy,
                    placement.device, placement.reason)
        pipe.set_progress_bar_config(disable=not self.progress)
        return _Loaded(pipe, placement, "diffusers")

    def _generator(self, seed: int | None) -> Any:
        """A CPU generator: the same seed gives the same noise on every placement."""
        if seed is None:
            return None
        import torch

        return torch.Generator(device="cpu").manual_seed(int(seed))

    def _check_supported(self, pipe: Any, wanted: dict[str, str]) -> None:
        """``wanted`` maps our parameter names to the pipeline's; refuse what it cannot take."""
        accepted = _call_params(pipe)
        missing = sorted(ours for ours, theirs in wanted.items() if theirs not in accepted)
        if missing:
            raise UnsupportedCapabilityError(
                f"{type(pipe).__name__} ('{self.ref}') does not take {missing}. Drop "
                f"{'it' if len(missing) == 1 else 'them'} for this model.")


class HFImageBackend(_HFMedia, ImageBackend):
    """diffusers text-to-image (and image-to-image) pipelines in-process."""

    PARAMS = ("negative_prompt", "width", "height", "num_inference_steps", "guidance_scale",
              "seed", "strength")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self._diffusers:
            raise ConfigurationError(
                f"'{self.ref}' is not a diffusers pipeline folder (no model_index.json). Image "
                "generation needs a diffusers pipeline.")

    def _load(self) -> _Loaded:
        return self._load_diffusers(single_device=False)

    @property
    def placement(self) -> Placement:
        """Where the pipeline went (loads it)."""
        return self._loaded().model.placement

    def _images(self, prompt: str, n: int, reference: Any, params: dict[str, Any]) -> list[Any]:
        if "strength" in params and reference is None:
            raise ConfigurationError(
                "strength= sets how far image-to-image moves from the reference; pass "
                "reference_image= with it, or drop strength.")
        entry = self._loaded()
        with entry.lock:
            loaded: _Loaded = entry.model
            pipe = loaded.pipe if reference is None else loaded.img2img()
            call = dict(params)
            seed = call.pop("seed", None)
            if reference is not None:
                width, height = call.pop("width", None), call.pop("height", None)
                call["image"] = _fit(reference, width, height,
                                     getattr(pipe, "vae_scale_factor", 8))
            self._check_supported(pipe, {k: k for k in call})
            pipe.set_progress_bar_config(disable=not self.progress)
            out = pipe(prompt=prompt, num_images_per_prompt=n, generator=self._generator(seed),
                       output_type="pil", **call)
            return list(out.images)


class HFAudioBackend(_HFMedia, AudioBackend):
    """Text-to-audio in-process: transformers' pipeline (MusicGen and kin) or diffusers audio
    pipelines (AudioLDM 2, Stable Audio)."""

    PARAMS = ("duration_s", "num_inference_steps", "seed")

    def _pipeline_class_name(self) -> str | None:
        # A diffusers audio folder names its class in model_index.json.
        return super()._pipeline_class_name() or ("DiffusionPipeline" if self._diffusers else None)

    def _load(self) -> _Loaded:
        if self._diffusers:
            return self._load_diffusers(single_device=True)
        from transformers import AutoModelForTextToWaveform, AutoTokenizer, pipeline

        kwargs = self.model_kwargs
        device = kwargs.pop("device", None)
        if kwargs.pop("device_map", None) is not None:
            raise ConfigurationError("Audio models go on one device: pass model_kwargs="
                                     "{'device': ...} rather than 'device_map'.")
        if device is None:
            free = free_gpu_memory()
            device = (f"cuda:{max(range(len(free)), key=free.__getitem__)}" if free
                      else fallback_device())
        hub = {"local_files_only": not self.allow_download, "revision": kwargs.get("revision")}
        with progress_bars(self.progress):
            try:
                # Model and tokenizer loaded here: pipeline() would not pass local_files_only on.
                model = AutoModelForTextToWaveform.from_pretrained(
                    self._source, use_safetensors=True, dtype=self._dtype(device),
                    **{**kwargs, **hub})
                tokenizer = AutoTokenizer.from_pretrained(self._source, **hub)
            except OSError as exc:
                raise ModelNotFoundError(
                    f"Could not load '{self.ref}' ({exc}). Check the folder or hub id; only "
                    "safetensors weights are loaded.") from exc
            except ValueError as exc:
                raise ConfigurationError(
                    f"'{self.ref}' is not a text-to-audio model transformers knows ({exc}).",
                ) from exc
        pipe = pipeline("text-to-audio", model=model, tokenizer=tokenizer, device=device)
        return _Loaded(pipe, Placement("device", device, reason="audio: one device"),
                       "transformers")

    @property
    def sample_rate(self) -> int:
        loaded: _Loaded = self._loaded().model
        pipe = loaded.pipe
        if loaded.kind == "transformers":
            return int(pipe.sampling_rate)
        for owner in (getattr(pipe, "vocoder", None), getattr(pipe, "vae", None)):
            config = getattr(owner, "config", None)
            rate = getattr(config, "sampling_rate", None) or getattr(owner, "sampling_rate", None)
            if rate:
                return int(rate)
        raise UnsupportedCapabilityError(f"Cannot tell the sample rate of {type(pipe).__name__}.")

    def _clips(self, prompt: str, n: int, params: dict[str, Any]) -> list[Any]:
        import numpy as np

        entry = self._loaded()
        with entry.lock:
            loaded: _Loaded = entry.model
            if loaded.kind == "transformers":
                clips = self._transformers_clips(loaded.pipe, prompt, n, params)
            else:
                # AudioLDM (2) take the length, Stable Audio the end time.
                accepted = _call_params(loaded.pipe)
                length = "audio_end_in_s" if "audio_end_in_s" in accepted else "audio_length_in_s"
                wanted = {"duration_s": length, "num_inference_steps": "num_inference_steps"}
                self._check_supported(loaded.pipe,
                                      {k: v for k, v in wanted.items() if k in params})
                call = {wanted[k]: v for k, v in params.items() if k in wanted}
                count = "num_waveforms_per_prompt"
                if count in accepted:
                    call[count] = n
                loaded.pipe.set_progress_bar_config(disable=not self.progress)
                out = loaded.pipe(prompt, generator=self._generator(params.get("seed")), **call)
                clips = list(out.audios)[:n]
            return [np.asarray(_as_numpy(c), dtype=np.float32).squeeze() for c in clips]

    def _transformers_clips(self, pipe: Any, prompt: str, n: int,
                            params: dict[str, Any]) -> list[Any]:
        import torch

        if "num_inference_steps" in params:
            raise UnsupportedCapabilityError(
                f"'{self.ref}' generates audio token by token (transformers); "
                "num_inference_steps only applies to diffusers audio models. Drop it.")
        forward: dict[str, Any] = {}
        if "duration_s" in params:
            frame_rate = getattr(getattr(pipe.model.config, "audio_encoder", None),
                                 "frame_rate", None)
            if not frame_rate:
                raise UnsupportedCapabilityError(
                    f"'{self.ref}' ({type(pipe.model).__name__}) sets its own length; "
                    "duration_s works with MusicGen-style models. Drop duration_s.")
            forward["max_new_tokens"] = max(1, round(params["duration_s"] * frame_rate))
        if "seed" in params:  # transformers samples from torch's global generator
            torch.manual_seed(int(params["seed"]))
        outputs = pipe([prompt] * n, forward_params=forward, batch_size=n)
        return [o["audio"] for o in outputs]


# -- helpers -------------------------------------------------------------------------------------


def _check_folder(folder: Path, ref: str) -> bool:
    """Whether ``folder`` is a diffusers pipeline (else a transformers model folder); refuse one
    without safetensors weights (pickle can run code when loaded)."""
    index = folder / "model_index.json"
    if index.is_file():
        subfolders = [folder / name for name, value in json.loads(index.read_text()).items()
                      if isinstance(value, list)]
        files = [p.name for d in [folder, *subfolders] if d.is_dir() for p in d.iterdir()]
        is_diffusers = True
    elif (folder / "config.json").is_file():
        files = [p.name for p in folder.iterdir()]
        is_diffusers = False
    else:
        raise ModelNotFoundError(
            f"{folder} is neither a diffusers pipeline folder (model_index.json) nor a model "
            "folder (config.json).")
    if has_safetensors(files, folder, ref,
                       convert="pipe.save_pretrained(folder, safe_serialization=True)"):
        return is_diffusers
    raise ConfigurationError(
        f"'{ref}' has no .safetensors weights in {folder}. modelplug loads safetensors only, "
        "because unpickling can run arbitrary code. Convert the weights once in a trusted "
        "environment (pipe.save_pretrained(folder, safe_serialization=True)).")


def _call_params(pipe: Any) -> frozenset[str]:
    return frozenset(inspect.signature(pipe.__call__).parameters)


def _place(pipe: Any, placement: Placement) -> None:
    if placement.strategy == "device":
        pipe.to(placement.device)
    elif placement.strategy == "model_offload":
        pipe.enable_model_cpu_offload(device=placement.device)
    elif placement.strategy == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=placement.device)
    # "device_map": diffusers placed it while loading.


def _fit(image: Any, width: int | None, height: int | None, multiple: int) -> Any:
    """The reference at the requested size, else its own size, rounded down to ``multiple``."""
    w, h = width or image.width, height or image.height
    w, h = max(multiple, w - w % multiple), max(multiple, h - h % multiple)
    return image if (w, h) == image.size else image.resize((w, h))


def _as_numpy(clip: Any) -> Any:
    return clip.float().cpu().numpy() if hasattr(clip, "cpu") else clip


__all__ = ["HFAudioBackend", "HFImageBackend"]
