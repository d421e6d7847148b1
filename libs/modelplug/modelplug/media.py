"""Image and audio generation: model references, the two factories, the backend base classes and
the output formats they share.

``create_image_backend("hf:<diffusers folder or hub id>")`` / ``"gemini:nano-banana"`` and
``create_audio_backend("hf:<folder or hub id>")`` resolve against the image/audio catalogs and
provider rows (their own namespaces: ``hf:`` here is a pipeline, not a chat model). Every image
backend returns ``format=`` "pil" (PIL images), "path" (PNG files in ``output_dir``), "bytes"
(PNG) or "data_url"; every audio backend "numpy" (float32 arrays at ``backend.sample_rate``),
"path" (WAV files), "bytes" (WAV) or "data_url". ``reference_image=`` (image-to-image) takes a
path, bytes, an http(s) URL (downloaded), a data URL or a PIL image.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from modelplug.backends import backend_class, build_backend
from modelplug.catalog.media import MediaModel, MediaModelInfo, Modality, find_media, media_models
from modelplug.errors import (
    AmbiguousModelError,
    ConfigurationError,
    UnknownModelError,
)
from modelplug.registry import ProviderSpec, check_kwargs, media_provider

IMAGE_FORMATS = ("pil", "path", "bytes", "data_url")
AUDIO_FORMATS = ("numpy", "path", "bytes", "data_url")
#: The most a reference-image download may read.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class MediaRef:
    """A resolved image or audio model: modality, provider, id and its catalog entry if any."""

    modality: Modality
    provider: str
    model_id: str
    info: MediaModelInfo | None = None

    def __str__(self) -> str:
        return f"{self.provider}:{self.model_id}"

    @property
    def spec(self) -> ProviderSpec:
        return media_provider(self.modality, self.provider)


MediaLike = str | MediaModel | MediaRef


def resolve_media_model(modality: Modality, model: MediaLike) -> MediaRef:
    """A ``"provider:model_id"`` string, catalog member or bare catalog name (``"nano-banana"``,
    ``"FLUX_2_KLEIN_4B"``) as a :class:`MediaRef`; aliases resolve to the catalog id."""
    if isinstance(model, MediaRef):
        return model
    if isinstance(model, MediaModel):
        info = model.info
        if info.modality != modality:
            raise ConfigurationError(
                f"{model.name} is an {info.modality} model; this needs an {modality} model.")
        return MediaRef(modality, info.provider, info.id, info)
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError(
            f"Expected an {modality} model string like 'hf:<model id>', a catalog member or a "
            f"catalog name; got {model!r}.")
    text = model.strip()
    if ":" in text:
        provider, _, model_id = text.partition(":")
        provider, model_id = provider.strip().lower(), model_id.strip()
        media_provider(modality, provider)  # unknown providers fail here, listing the valid ones
        if not model_id:
            raise ConfigurationError(
                f"Model string {text!r} has an empty model id. Write it as '{provider}:<id>'.")
        info = find_media(modality, provider, model_id)
        return MediaRef(modality, provider, info.id if info else model_id, info)
    matches = [m.info for m in media_models(modality)
               if m.name == text.upper() or text in (m.info.id, *m.info.aliases)]
    if not matches:
        names = [m.name for m in media_models(modality)]
        raise UnknownModelError(
            f"No {modality} catalog model is named {text!r}. Use 'provider:model_id' (e.g. "
            f"'hf:<folder or hub id>') or one of {names}.")
    if len(matches) > 1:
        raise AmbiguousModelError(
            f"{modality.capitalize()} model name {text!r} is ambiguous. Pin one with its "
            f"'provider:model_id' string: {[i.key for i in matches]}.")
    return MediaRef(modality, matches[0].provider, matches[0].id, matches[0])


def _create(modality: Modality, model: MediaLike, settings: dict[str, Any]) -> Any:
    ref = resolve_media_model(modality, model)
    settings = {k: v for k, v in settings.items() if v is not None}
    spec = ref.spec
    check_kwargs(spec, settings, standard=())  # image/audio calls take their own parameters
    return build_backend(ref, spec, settings)


def create_image_backend(model: MediaLike, **settings: Any) -> ImageBackend:
    """The image backend for ``model``; construction is cheap (weights load on first use)."""
    return _create("image", model, settings)


def create_audio_backend(model: MediaLike, **settings: Any) -> AudioBackend:
    """The audio backend for ``model``; construction is cheap (weights load on first use)."""
    return _create("audio", model, settings)


def split_generation_kwargs(modality: Modality, model: MediaLike,
                            kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Adapter keyword arguments as (per-call generation defaults the model's backend takes,
    provider settings). Imports the backend module, not its SDK."""
    params = backend_class(resolve_media_model(modality, model).spec).PARAMS  # type: ignore[attr-defined]
    return ({k: v for k, v in kwargs.items() if k in params},
            {k: v for k, v in kwargs.items() if k not in params})


# -- backends ------------------------------------------------------------------------------------


class MediaBackend:
    """Shared by image and audio backends: settings, per-call parameter checks, output files."""

    #: Per-call generation parameters this backend takes (besides the count and the format).
    PARAMS: ClassVar[tuple[str, ...]] = ()
    FORMATS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ref: MediaRef, spec: ProviderSpec, settings: dict[str, Any]) -> None:
        self.ref, self.spec, self.settings = ref, spec, settings

    def load(self) -> None:
        """Load the weights now rather than on the first call (in-process backends; a cloud
        backend has nothing to load): a server replica fails at its start, not its first
        request."""

    def _check_call(self, count: int, count_name: str, format: str, output_dir: Any,
                    params: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise TypeError(
                f"'{self.ref}' got unexpected generation argument(s) {unknown}. It takes: "
                f"{list(self.PARAMS)}.")
        if format not in self.FORMATS:
            raise ConfigurationError(
                f"format={format!r} is not an output format. Use one of {list(self.FORMATS)}.")
        if output_dir is not None and format != "path":
            raise ConfigurationError(
                f"output_dir= is where format='path' writes files; with format={format!r} "
                "nothing is written. Pass format='path' or drop output_dir.")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigurationError(f"{count_name} must be a positive integer; got {count!r}.")
        return {k: v for k, v in params.items() if v is not None}


class ImageBackend(MediaBackend):
    """Base of image backends: subclasses implement :meth:`_images` (PIL images out)."""

    FORMATS = IMAGE_FORMATS

    def generate(self, prompt: str, *, num_images: int = 1, format: str = "pil",
                 output_dir: str | os.PathLike[str] | None = None,
                 reference_image: Any = None, **params: Any) -> list[Any]:
        """``num_images`` images for ``prompt`` in ``format`` (see the module docstring)."""
        params = self._check_call(num_images, "num_images", format, output_dir, params)
        reference = None if reference_image is None else load_image(reference_image)
        images = self._images(prompt, num_images, reference, params)
        return [format_image(image, format, output_dir) for image in images]

    async def agenerate(self, prompt: str, **kwargs: Any) -> list[Any]:
        """:meth:`generate` in a worker thread: the event loop never blocks."""
        return await asyncio.to_thread(self.generate, prompt, **kwargs)

    def _images(self, prompt: str, n: int, reference: Any, params: dict[str, Any]) -> list[Any]:
        raise NotImplementedError


class AudioBackend(MediaBackend):
    """Base of audio backends: subclasses implement :meth:`_clips` (float32 arrays out) and set
    :attr:`sample_rate`."""

    FORMATS = AUDIO_FORMATS

    @property
    def sample_rate(self) -> int:
        raise NotImplementedError

    def generate(self, prompt: str, *, num_audio: int = 1, format: str = "numpy",
                 output_dir: str | os.PathLike[str] | None = None, **params: Any) -> list[Any]:
        """``num_audio`` clips for ``prompt`` in ``format`` (see the module docstring)."""
        params = self._check_call(num_audio, "num_audio", format, output_dir, params)
        duration = params.get("duration_s")
        if duration is not None and not (isinstance(duration, int | float) and duration > 0):
            raise ConfigurationError(f"duration_s must be a positive number; got {duration!r}.")
        clips = self._clips(prompt, num_audio, params)
        return [format_audio(clip, self.sample_rate, format, output_dir) for clip in clips]

    async def agenerate(self, prompt: str, **kwargs: Any) -> list[Any]:
        return await asyncio.to_thread(self.generate, prompt, **kwargs)

    def _clips(self, prompt: str, n: int, params: dict[str, Any]) -> list[Any]:
        raise NotImplementedError


# -- inputs and outputs --------------------------------------------------------------------------


def load_image(source: Any) -> Any:
    """An RGB PIL image from a PIL image, bytes, a data URL, an http(s) URL or a file path."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    elif isinstance(source, str) and source.startswith("data:"):
        header, _, payload = source.partition(",")
        if ";base64" not in header:
            raise ConfigurationError("A data URL reference image must be base64 "
                                     "(data:image/png;base64,...).")
        data = base64.b64decode(payload)
    elif isinstance(source, str) and source.startswith(("http://", "https://")):
        data = _download(source)
    elif isinstance(source, str | os.PathLike):
        path = Path(str(source).removeprefix("file://")).expanduser()
        if not path.is_file():
            raise ConfigurationError(f"reference_image {str(source)!r} is not a file, URL or data "
                                     "URL.")
        data = path.read_bytes()
    else:
        raise ConfigurationError(
            f"reference_image must be a path, bytes, an http(s) or data URL, or a PIL image; got "
            f"{type(source).__name__}.")
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as exc:  # PIL raises several types for undecodable data
        raise ConfigurationError(f"reference_image could not be read as an image ({exc}).") from exc


def _download(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        data = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ConfigurationError(f"reference_image at {url} is over "
                                 f"{MAX_DOWNLOAD_BYTES // 2**20} MiB.")
    return data


def format_image(image: Any, format: str, output_dir: Any = None) -> Any:
    if format == "pil":
        return image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _encoded(buffer.getvalue(), "image/png", ".png", format, output_dir)


def format_audio(clip: Any, sample_rate: int, format: str, output_dir: Any = None) -> Any:
    if format == "numpy":
        return clip
    return _encoded(wav_bytes(clip, sample_rate), "audio/wav", ".wav", format, output_dir)


def _encoded(data: bytes, mime: str, suffix: str, format: str, output_dir: Any) -> Any:
    if format == "bytes":
        return data
    if format == "data_url":
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    folder = Path(output_dir).expanduser() if output_dir is not None else _default_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}{suffix}"
    path.write_bytes(data)
    return str(path)


_DEFAULT_DIR: Path | None = None


def _default_dir() -> Path:
    """Where format='path' writes without output_dir: one fresh temp folder per process."""
    global _DEFAULT_DIR
    if _DEFAULT_DIR is None:
        _DEFAULT_DIR = Path(tempfile.mkdtemp(prefix="modelplug-"))
    return _DEFAULT_DIR


def wav_bytes(clip: Any, sample_rate: int) -> bytes:
    """16-bit PCM WAV of a float array in [-1, 1]: (samples,) or (channels, samples)."""
    import wave

    import numpy as np

    samples = np.asarray(clip, dtype=np.float32)
    samples = samples[None, :] if samples.ndim == 1 else samples
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").T  # frames x channels
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(pcm.shape[1])
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


__all__ = [
    "AUDIO_FORMATS",
    "IMAGE_FORMATS",
    "AudioBackend",
    "ImageBackend",
    "MediaRef",
    "create_audio_backend",
    "create_image_backend",
    "format_audio",
    "format_image",
    "load_image",
    "resolve_media_model",
    "split_generation_kwargs",
    "wav_bytes",
]
