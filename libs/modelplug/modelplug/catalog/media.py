"""Image and audio models the project knows by name. Data only: add a row, not code.

Image and audio ids live in their own namespaces: ``hf:`` names a text model for
``create_backend`` and a diffusers pipeline for ``create_image_backend``, so these enums never
take part in text-model resolution. ``pipeline_class`` names a class in the diffusers namespace
(``None``: the class written in the folder's ``model_index.json``); audio rows without one run
through transformers' text-to-audio pipeline.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

Modality = Literal["image", "audio"]


@dataclass(frozen=True)
class MediaModelInfo:
    """What the catalog knows about one image or audio model of one provider."""

    modality: Modality
    provider: str
    id: str
    #: diffusers pipeline class name (hf image, diffusers audio); None: from model_index.json,
    #: or (audio) transformers' text-to-audio pipeline.
    pipeline_class: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.id}"


class MediaModel(enum.Enum):
    """Base of the image/audio enums; ``member.value`` is the :class:`MediaModelInfo`."""

    @property
    def info(self) -> MediaModelInfo:
        return self.value


def _image(provider: str, model_id: str, pipeline_class: str | None = None,
           aliases: tuple[str, ...] = ()) -> MediaModelInfo:
    return MediaModelInfo("image", provider, model_id, pipeline_class, aliases)


def _audio(provider: str, model_id: str, pipeline_class: str | None = None,
           aliases: tuple[str, ...] = ()) -> MediaModelInfo:
    return MediaModelInfo("audio", provider, model_id, pipeline_class, aliases)


class HFImageModel(MediaModel):
    SD_1_5 = _image("hf", "stable-diffusion-v1-5/stable-diffusion-v1-5", "StableDiffusionPipeline")
    SDXL_BASE_1_0 = _image("hf", "stabilityai/stable-diffusion-xl-base-1.0",
                           "StableDiffusionXLPipeline")
    SDXL_TURBO = _image("hf", "stabilityai/sdxl-turbo", "StableDiffusionXLPipeline")
    SD_3_5_MEDIUM = _image("hf", "stabilityai/stable-diffusion-3.5-medium",
                           "StableDiffusion3Pipeline")
    FLUX_1_SCHNELL = _image("hf", "black-forest-labs/FLUX.1-schnell", "FluxPipeline")
    FLUX_1_DEV = _image("hf", "black-forest-labs/FLUX.1-dev", "FluxPipeline")
    FLUX_2_KLEIN_4B = _image("hf", "black-forest-labs/FLUX.2-klein-4B", "Flux2KleinPipeline")
    QWEN_IMAGE = _image("hf", "Qwen/Qwen-Image", "QwenImagePipeline")


class GeminiImageModel(MediaModel):
    GEMINI_2_5_FLASH_IMAGE = _image("gemini", "gemini-2.5-flash-image",
                                    aliases=("nano-banana",))
    GEMINI_3_PRO_IMAGE = _image("gemini", "gemini-3-pro-image-preview",
                                aliases=("nano-banana-pro",))


class HFAudioModel(MediaModel):
    MUSICGEN_SMALL = _audio("hf", "facebook/musicgen-small")
    MUSICGEN_MEDIUM = _audio("hf", "facebook/musicgen-medium")
    AUDIOLDM2 = _audio("hf", "cvssp/audioldm2", "AudioLDM2Pipeline")
    STABLE_AUDIO_OPEN_1_0 = _audio("hf", "stabilityai/stable-audio-open-1.0",
                                   "StableAudioPipeline")


IMAGE_MODEL_ENUMS: tuple[type[MediaModel], ...] = (HFImageModel, GeminiImageModel)
AUDIO_MODEL_ENUMS: tuple[type[MediaModel], ...] = (HFAudioModel,)
_ENUMS: dict[str, tuple[type[MediaModel], ...]] = {"image": IMAGE_MODEL_ENUMS,
                                                   "audio": AUDIO_MODEL_ENUMS}


def media_models(modality: Modality) -> list[MediaModel]:
    return [member for enum_cls in _ENUMS[modality] for member in enum_cls]


def find_media(modality: Modality, provider: str, model_id: str) -> MediaModelInfo | None:
    """The catalog entry for ``provider:model_id`` (ids and aliases) of one modality, or None."""
    for member in media_models(modality):
        info = member.info
        if info.provider == provider and (model_id == info.id or model_id in info.aliases):
            return info
    return None


__all__ = [
    "AUDIO_MODEL_ENUMS",
    "IMAGE_MODEL_ENUMS",
    "GeminiImageModel",
    "HFAudioModel",
    "HFImageModel",
    "MediaModel",
    "MediaModelInfo",
    "find_media",
    "media_models",
]
