"""ImageModelPlug and AudioModelPlug: image and audio generation as LangChain Runnables.

A prompt string (or a dict with ``"prompt"`` and per-call overrides, or a PromptValue) goes in; a
list of images or clips in the chosen ``format`` comes out. ``.as_tool()`` turns either into a tool
an agent can call: it writes files and answers with their paths (the outputs ride along as the
tool message's artifact).
"""

from __future__ import annotations

from typing import Any, ClassVar

from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from modelplug.backends import collect_provider_kwargs
from modelplug.catalog.media import MediaModel
from modelplug.media import (
    AudioBackend,
    ImageBackend,
    MediaBackend,
    create_audio_backend,
    create_image_backend,
    resolve_media_model,
    split_generation_kwargs,
)

MediaInput = str | dict[str, Any] | PromptValue


class _MediaPlug(RunnableSerializable[MediaInput, list[Any]]):
    """Shared by ImageModelPlug and AudioModelPlug: settings, input handling, the tool."""

    model: str
    output_dir: str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    api_key: SecretStr | None = None
    base_url: str | None = None
    #: Default generation arguments (``seed``, ``num_inference_steps``, ...), per-call overridable.
    generation: dict[str, Any] = Field(default_factory=dict)
    #: Provider-specific settings (any keyword argument that is neither a field nor a
    #: generation argument of the model's backend).
    provider_kwargs: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    _modality: ClassVar[str]
    _count: ClassVar[str]
    _backend: MediaBackend = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _collect_provider_kwargs(cls, values: Any) -> Any:
        values = collect_provider_kwargs(cls, values)
        if not isinstance(values, dict) or "model" not in values:
            return values
        if isinstance(values["model"], MediaModel):  # a catalog member, of this modality: as text
            values = {**values, "model": str(resolve_media_model(cls._modality, values["model"]))}
        # Extra kwargs that the backend takes per call are generation defaults.
        generation, settings = split_generation_kwargs(
            cls._modality, values["model"], dict(values.get("provider_kwargs") or {}))  # type: ignore[arg-type]
        return {**values, "provider_kwargs": settings,
                "generation": {**values.get("generation", {}), **generation}}

    def _create(self) -> MediaBackend:
        raise NotImplementedError

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._backend = self._create()

    @property
    def backend(self) -> MediaBackend:
        """The modelplug backend (shared weights for in-process models)."""
        return self._backend

    def _settings(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "max_retries": self.max_retries,
                "api_key": self.api_key, "base_url": self.base_url, **self.provider_kwargs}

    def _arguments(self, input: MediaInput, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if isinstance(input, PromptValue):
            input = input.to_string()
        if isinstance(input, str):
            prompt, overrides = input, {}
        elif isinstance(input, dict) and isinstance(input.get("prompt"), str):
            overrides = dict(input)
            prompt = overrides.pop("prompt")
        else:
            raise TypeError(f"{type(self).__name__} takes a prompt string, a PromptValue or a "
                            f"dict with a 'prompt' string; got {type(input).__name__}.")
        defaults = {self._count: getattr(self, self._count), "format": self.format,
                    **self.generation}
        arguments = {**defaults, **overrides, **kwargs}
        # The object's output_dir is where format="path" writes, whichever way the format was
        # chosen; other formats write nothing, so it does not apply to them. An output_dir passed
        # per call with another format stays an error (the backend says so).
        if arguments["format"] == "path" and self.output_dir is not None:
            arguments.setdefault("output_dir", self.output_dir)
        return prompt, arguments

    def invoke(self, input: MediaInput, config: RunnableConfig | None = None,
               **kwargs: Any) -> list[Any]:
        def run(value: MediaInput) -> list[Any]:
            prompt, arguments = self._arguments(value, kwargs)
            return self._backend.generate(prompt, **arguments)  # type: ignore[attr-defined]

        return self._call_with_config(run, input, config)

    async def ainvoke(self, input: MediaInput, config: RunnableConfig | None = None,
                      **kwargs: Any) -> list[Any]:
        async def run(value: MediaInput) -> list[Any]:
            prompt, arguments = self._arguments(value, kwargs)
            return await self._backend.agenerate(prompt, **arguments)  # type: ignore[attr-defined]

        return await self._acall_with_config(run, input, config)

    def as_tool(self, args_schema: type[BaseModel] | None = None, *, name: str | None = None,
                description: str | None = None, format: str = "path",
                **kwargs: Any) -> BaseTool:
        """A tool an agent can call with a prompt: files in ``format`` ("path" by default, or
        "data_url"); the answer names them, the outputs are the tool message's artifact.

        The default schema has one field, ``prompt``. An ``args_schema`` may add any per-call
        argument (``reference_image`` for image-to-image, ``seed``, ...): every field the
        model fills in is passed to the call."""
        if format not in ("path", "data_url"):
            raise ValueError(f"A {self._modality} tool answers with text: format must be 'path' "
                             f"or 'data_url', not {format!r}.")
        schema = args_schema or self._tool_schema()
        noun = self._modality

        def reply(outputs: list[Any]) -> tuple[str, list[Any]]:
            label = "file(s)" if format == "path" else "data URL(s)"
            return f"Generated {len(outputs)} {noun} {label}: " + ", ".join(outputs), outputs

        def call(**arguments: Any) -> tuple[str, list[Any]]:
            return reply(self.invoke({**arguments, "format": format}))

        async def acall(**arguments: Any) -> tuple[str, list[Any]]:
            return reply(await self.ainvoke({**arguments, "format": format}))

        return StructuredTool.from_function(
            func=call, coroutine=acall, name=name or f"generate_{noun}",
            description=description or self._tool_description(), args_schema=schema,
            response_format="content_and_artifact", **kwargs)

    def _tool_schema(self) -> type[BaseModel]:
        raise NotImplementedError

    def _tool_description(self) -> str:
        raise NotImplementedError


class _ImageToolInput(BaseModel):
    prompt: str = Field(description="The picture to draw, in a few words.")


class _AudioToolInput(BaseModel):
    prompt: str = Field(description="The sound or music to make, in a few words.")


class ImageModelPlug(_MediaPlug):
    """Image generation over any modelplug image provider, as a LangChain Runnable.

    ``hf:`` runs a diffusers pipeline in-process (memory-aware GPU placement, img2img through
    ``reference_image``); ``gemini:`` calls Gemini image models through the google-genai SDK
    (``"gemini:nano-banana"``).

    Setup:
        .. code-block:: bash

            pip install "langchain-modelplug[diffusers]"   # or [google] for gemini:

    Key init args:
        model: str
            ``"hf:<diffusers folder or hub id>"``, ``"hf:black-forest-labs/FLUX.1-schnell"``,
            ``"gemini:nano-banana"``, or a catalog name (``"FLUX_2_KLEIN_4B"``).
        num_images: int
            Images per call (default 1; Gemini sends one request per image).
        format: str
            ``"pil"`` (default), ``"path"`` (PNG files in ``output_dir``), ``"bytes"`` or
            ``"data_url"``.
        output_dir: str | None
            Where ``format="path"`` writes (default: a temporary folder); calls in another
            format ignore it.
        **generation defaults
            hf: ``negative_prompt``, ``width``, ``height``, ``num_inference_steps``,
            ``guidance_scale``, ``seed``, ``strength``; gemini: ``aspect_ratio``,
            ``image_size``. Each can be overridden per call.
        **provider kwargs
            hf: ``model_kwargs={"device": "cuda:1"}`` or ``{"device_map": ...}``,
            ``torch_dtype``, ``allow_download``, ``progress``; gemini: ``api_key``,
            ``base_url``, ``timeout``, ``max_retries``.

    Instantiate:
        .. code-block:: python

            from langchain_modelplug import ImageModelPlug

            draw = ImageModelPlug(model="hf:stabilityai/sdxl-turbo", num_inference_steps=1,
                                  guidance_scale=0.0)

    Invoke:
        .. code-block:: python

            [image] = draw.invoke("a lighthouse at dusk")            # a PIL image
            paths = draw.invoke({"prompt": "a lighthouse", "num_images": 2, "seed": 7,
                                 "format": "path", "output_dir": "out"})
            edited = draw.invoke({"prompt": "in winter", "reference_image": "out/a.png",
                                  "strength": 0.6})

    Async:
        .. code-block:: python

            images = await draw.ainvoke("a lighthouse at dusk")

    Tool calling:
        .. code-block:: python

            from langchain.agents import create_agent

            agent = create_agent(model=chat_model, tools=[draw.as_tool()])
    """

    num_images: int = Field(default=1, gt=0)
    format: str = "pil"
    _modality: ClassVar[str] = "image"
    _count: ClassVar[str] = "num_images"

    def _create(self) -> ImageBackend:
        return create_image_backend(self.model, **self._settings())

    def _tool_schema(self) -> type[BaseModel]:
        return _ImageToolInput

    def _tool_description(self) -> str:
        return "Generate an image from a text description. Returns where the image was saved."


class AudioModelPlug(_MediaPlug):
    """Text-to-audio over modelplug audio providers, as a LangChain Runnable.

    ``hf:`` runs transformers' text-to-audio pipeline (MusicGen and kin) or a diffusers audio
    pipeline (AudioLDM 2, Stable Audio) in-process.

    Setup:
        .. code-block:: bash

            pip install "langchain-modelplug[diffusers]"

    Key init args:
        model: str
            ``"hf:facebook/musicgen-small"``, ``"hf:<local folder>"``, or a catalog name.
        num_audio: int
            Clips per call (default 1).
        format: str
            ``"numpy"`` (default; float32 at ``backend.sample_rate``), ``"path"`` (WAV files
            in ``output_dir``), ``"bytes"`` (WAV) or ``"data_url"``.
        **generation defaults
            ``duration_s``, ``num_inference_steps`` (diffusers models), ``seed``.

    Instantiate:
        .. code-block:: python

            from langchain_modelplug import AudioModelPlug

            music = AudioModelPlug(model="hf:facebook/musicgen-small", duration_s=5)

    Invoke:
        .. code-block:: python

            [clip] = music.invoke("calm piano")                        # a numpy array
            [path] = music.invoke({"prompt": "drums", "format": "path", "seed": 1})

    Async:
        .. code-block:: python

            clips = await music.ainvoke("calm piano")

    Tool calling:
        .. code-block:: python

            agent = create_agent(model=chat_model, tools=[music.as_tool()])
    """

    num_audio: int = Field(default=1, gt=0)
    format: str = "numpy"
    _modality: ClassVar[str] = "audio"
    _count: ClassVar[str] = "num_audio"

    def _create(self) -> AudioBackend:
        return create_audio_backend(self.model, **self._settings())

    @property
    def sample_rate(self) -> int:
        return self._backend.sample_rate  # type: ignore[attr-defined]

    def _tool_schema(self) -> type[BaseModel]:
        return _AudioToolInput

    def _tool_description(self) -> str:
        return "Generate audio from a text description. Returns where the audio was saved."


__all__ = ["AudioModelPlug", "ImageModelPlug"]
