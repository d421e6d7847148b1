"""Gemini image generation through Google's google-genai SDK: ``gemini:nano-banana``.

``client.models.generate_content`` with ``response_modalities=[IMAGE]``; the image comes back as
an inline-data part. Nano Banana returns one image per call, so ``num_images=N`` sends N requests
(concurrently from :meth:`agenerate`). ``reference_image=`` is sent as an inline image part next to
the prompt (image editing). Timeout and retries are the SDK's own (``timeout`` in seconds,
``max_retries`` extra attempts).
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

from modelplug.backends.base import maps_errors
from modelplug.backends.networked import NetworkedClients
from modelplug.errors import (
    AuthenticationError,
    BadRequestError,
    ModelPlugError,
    map_sdk_error,
)
from modelplug.media import ImageBackend, format_image, load_image


class GeminiImageBackend(NetworkedClients, ImageBackend):
    PARAMS = ("aspect_ratio", "image_size")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.require_api_key()  # a missing key fails here, before any request

    def map_error(self, exc: BaseException) -> BaseException:
        """google-genai's APIError (and httpx's) as the typed errors every backend reports.
        Google answers a bad key with 400 INVALID_ARGUMENT, so that one is told apart."""
        mapped = map_sdk_error(exc, provider=self.spec.key,
                               timeout=self.settings.get("timeout"), secrets=self.secrets())
        if isinstance(mapped, BadRequestError) and "API key not valid" in str(mapped):
            return AuthenticationError(
                f"{mapped} Check GOOGLE_API_KEY or api_key=...", provider=self.spec.key,
                status_code=mapped.status_code)
        return mapped

    async def amap_error(self, exc: BaseException) -> BaseException:
        return self.map_error(exc)

    def new_client(self, is_async: bool) -> Any:
        from google import genai
        from google.genai import types

        s = self.settings
        options: dict[str, Any] = {"base_url": s.get("base_url") or self.spec.base_url}
        if s.get("timeout") is not None:
            options["timeout"] = int(float(s["timeout"]) * 1000)  # the SDK counts milliseconds
        if s.get("max_retries") is not None:
            options["retry_options"] = types.HttpRetryOptions(attempts=int(s["max_retries"]) + 1)
        if s.get("default_headers"):
            options["headers"] = dict(s["default_headers"])
        client = genai.Client(api_key=self.secret_value(self.api_key()),
                              http_options=types.HttpOptions(**options))
        return client.aio if is_async else client

    def _request(self, prompt: str, reference: Any, params: dict[str, Any]) -> dict[str, Any]:
        from google.genai import types

        contents: list[Any] = [prompt]
        if reference is not None:
            buffer = io.BytesIO()
            reference.save(buffer, format="PNG")
            contents.append(types.Part.from_bytes(data=buffer.getvalue(), mime_type="image/png"))
        config = types.GenerateContentConfig(
            response_modalities=[types.Modality.IMAGE],
            image_config=types.ImageConfig(**params) if params else None)
        return {"model": self.ref.model_id, "contents": contents, "config": config}

    def _image(self, response: Any) -> Any:
        """The first image of a response; a response without one says why."""
        from PIL import Image

        texts, finish = [], None
        for candidate in response.candidates or []:
            finish = candidate.finish_reason
            for part in (candidate.content.parts if candidate.content else None) or []:
                if part.inline_data is not None and part.inline_data.data:
                    return Image.open(io.BytesIO(part.inline_data.data)).convert("RGB")
                if part.text:
                    texts.append(part.text)
        blocked = getattr(response.prompt_feedback, "block_reason", None)
        raise ModelPlugError(
            f"'{self.ref}' returned no image (finish_reason={finish}, block_reason={blocked}"
            f"{', text: ' + ' '.join(texts)[:300] if texts else ''}). Rephrase the prompt or "
            "check that the model generates images.")

    @maps_errors
    def _images(self, prompt: str, n: int, reference: Any, params: dict[str, Any]) -> list[Any]:
        request = self._request(prompt, reference, params)
        return [self._image(self.client.models.generate_content(**request)) for _ in range(n)]

    @maps_errors
    async def agenerate(self, prompt: str, **kwargs: Any) -> list[Any]:
        """The N requests run concurrently on the SDK's async client of the running loop."""
        n = kwargs.pop("num_images", 1)
        format, output_dir = kwargs.pop("format", "pil"), kwargs.pop("output_dir", None)
        reference = kwargs.pop("reference_image", None)
        params = self._check_call(n, "num_images", format, output_dir, kwargs)
        if reference is not None:  # a URL is downloaded: off the event loop
            reference = await asyncio.to_thread(load_image, reference)
        request = self._request(prompt, reference, params)
        responses = await asyncio.gather(
            *(self.aclient.models.generate_content(**request) for _ in range(n)))
        return [format_image(self._image(r), format, output_dir) for r in responses]


__all__ = ["GeminiImageBackend"]
