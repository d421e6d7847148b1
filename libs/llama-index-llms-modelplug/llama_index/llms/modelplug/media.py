"""Image and audio generation as LlamaIndex FunctionTools: ``image_tool`` answers with
ImageBlocks, ``audio_tool`` with AudioBlocks, so agents and chat histories carry the media itself.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.llms.types import AudioBlock, ImageBlock
from llama_index.core.tools import FunctionTool

from modelplug.media import (
    AudioBackend,
    ImageBackend,
    MediaLike,
    create_audio_backend,
    create_image_backend,
    split_generation_kwargs,
)


def image_tool(model: MediaLike, *, name: str = "generate_image", description: str | None = None,
               num_images: int = 1, **kwargs: Any) -> FunctionTool:
    """A FunctionTool that draws ``num_images`` image(s) for a prompt and returns ImageBlocks.

    ``kwargs`` are generation defaults the backend takes (``seed``, ``num_inference_steps``,
    ``aspect_ratio``, ...) and provider settings (``model_kwargs``, ``api_key``, ...)::

        tool = image_tool("hf:stabilityai/sdxl-turbo", num_inference_steps=1, guidance_scale=0.0)
        agent = FunctionAgent(tools=[tool], llm=llm)
    """
    generation, settings = split_generation_kwargs("image", model, kwargs)
    backend: ImageBackend = create_image_backend(model, **settings)

    def blocks(pngs: list[bytes]) -> list[ImageBlock]:
        return [ImageBlock(image=data, image_mimetype="image/png") for data in pngs]

    def generate_image(prompt: str, reference_image: str | None = None) -> list[ImageBlock]:
        """Generate an image from a text description (optionally from a reference image path
        or URL)."""
        return blocks(backend.generate(prompt, num_images=num_images, format="bytes",
                                       reference_image=reference_image, **generation))

    async def agenerate_image(prompt: str,
                              reference_image: str | None = None) -> list[ImageBlock]:
        return blocks(await backend.agenerate(prompt, num_images=num_images, format="bytes",
                                              reference_image=reference_image, **generation))

    return FunctionTool.from_defaults(fn=generate_image, async_fn=agenerate_image, name=name,
                                      description=description)


def audio_tool(model: MediaLike, *, name: str = "generate_audio", description: str | None = None,
               num_audio: int = 1, **kwargs: Any) -> FunctionTool:
    """A FunctionTool that makes ``num_audio`` WAV clip(s) for a prompt and returns AudioBlocks.

    ``kwargs`` are generation defaults (``duration_s``, ``num_inference_steps``, ``seed``) and
    provider settings (``model_kwargs``, ``torch_dtype``, ...).
    """
    generation, settings = split_generation_kwargs("audio", model, kwargs)
    backend: AudioBackend = create_audio_backend(model, **settings)

    def blocks(wavs: list[bytes]) -> list[AudioBlock]:
        return [AudioBlock(audio=data, format="wav") for data in wavs]

    def generate_audio(prompt: str) -> list[AudioBlock]:
        """Generate audio from a text description."""
        return blocks(backend.generate(prompt, num_audio=num_audio, format="bytes", **generation))

    async def agenerate_audio(prompt: str) -> list[AudioBlock]:
        return blocks(await backend.agenerate(prompt, num_audio=num_audio, format="bytes",
                                              **generation))

    return FunctionTool.from_defaults(fn=generate_audio, async_fn=agenerate_audio, name=name,
                                      description=description)


__all__ = ["audio_tool", "image_tool"]
