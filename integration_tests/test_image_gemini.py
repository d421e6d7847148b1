"""Gemini image generation at the wire: GeminiImageBackend -> the official google-genai SDK -> a
loopback fake of ``models/{model}:generateContent`` (integration_tests/fakes/gemini_api.py)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator

import pytest
from fakes.gemini_api import API_KEY, FakeGemini, png
from fakes.server import LoopbackServer
from PIL import Image

from modelplug import AuthenticationError, ConfigurationError, ModelPlugError
from modelplug.media import create_image_backend


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    api = FakeGemini()
    server = LoopbackServer(api.app).start()
    api.base_url = server.url  # type: ignore[attr-defined]
    yield api
    server.stop()


def _backend(fake: FakeGemini, model: str = "gemini:nano-banana", **kwargs):
    kwargs.setdefault("api_key", API_KEY)
    return create_image_backend(model, base_url=fake.base_url, **kwargs)  # type: ignore[attr-defined]


def test_nano_banana_alias_asks_for_an_image(fake: FakeGemini) -> None:
    backend = _backend(fake)
    assert str(backend.ref) == "gemini:gemini-2.5-flash-image"
    [image] = backend.generate("a banana")
    assert isinstance(image, Image.Image) and image.size == (16, 16)
    [path] = fake.paths
    assert path.endswith("/models/gemini-2.5-flash-image:generateContent")
    body = fake.requests[0]
    assert body["contents"][0]["parts"] == [{"text": "a banana"}]
    assert body["generationConfig"]["responseModalities"] == ["IMAGE"]
    assert fake.headers[0]["x-goog-api-key"] == API_KEY


def test_num_images_sends_one_request_per_image(fake: FakeGemini) -> None:
    images = _backend(fake).generate("a banana", num_images=3, format="bytes")
    assert len(fake.requests) == 3
    colors = {Image.open(io.BytesIO(data)).getpixel((0, 0)) for data in images}
    assert len(colors) == 3  # three distinct answers, not one repeated


async def test_async_requests_run_concurrently(fake: FakeGemini) -> None:
    urls = await _backend(fake).agenerate("a banana", num_images=2, format="data_url")
    assert len(fake.requests) == 2
    assert all(u.startswith("data:image/png;base64,") for u in urls)
    Image.open(io.BytesIO(base64.b64decode(urls[0].partition(",")[2]))).verify()


def test_one_backend_from_two_event_loops(fake: FakeGemini) -> None:
    # An async connection pool belongs to the loop that opened it: each loop gets its own client.
    backend = _backend(fake)
    for _ in range(2):
        [image] = asyncio.run(backend.agenerate("a banana"))
        assert isinstance(image, Image.Image)
    assert len(fake.requests) == 2


def test_aspect_ratio_and_reference_image(fake: FakeGemini) -> None:
    reference = png((255, 0, 0))
    [image] = _backend(fake).generate("make it blue", reference_image=reference,
                                      aspect_ratio="16:9", image_size="1K")
    body = fake.requests[0]
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "1K"}
    text, inline = body["contents"][0]["parts"]
    assert text == {"text": "make it blue"}
    blob = inline["inlineData"]
    # proto3 JSON: the API takes lowerCamel or the proto's snake_case field names, and
    # URL-safe base64; this SDK version writes mime_type and URL-safe data.
    assert blob.get("mimeType", blob.get("mime_type")) == "image/png"
    sent = Image.open(io.BytesIO(base64.urlsafe_b64decode(blob["data"])))
    assert sent.getpixel((0, 0)) == (255, 0, 0)
    assert image.size == (64, 36)


def test_a_text_only_answer_is_an_error_that_says_why(fake: FakeGemini) -> None:
    fake.reply_text("I can't draw that.")
    with pytest.raises(ModelPlugError, match=r"returned no image.*I can't draw that"):
        _backend(fake).generate("something")


def test_the_sdk_retries_a_server_error(fake: FakeGemini) -> None:
    fake.fail(503)
    [image] = _backend(fake, max_retries=2).generate("a banana")
    assert isinstance(image, Image.Image)
    assert len(fake.requests) == 2


def test_api_key_from_the_environment_and_missing(fake: FakeGemini,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", API_KEY)
    backend = create_image_backend("gemini:nano-banana", base_url=fake.base_url)  # type: ignore[attr-defined]
    backend.generate("a banana")
    assert fake.headers[-1]["x-goog-api-key"] == API_KEY
    monkeypatch.delenv("GOOGLE_API_KEY")
    with pytest.raises(ConfigurationError, match="GOOGLE_API_KEY"):
        create_image_backend("gemini:nano-banana")


def test_a_wrong_key_is_an_authentication_error(fake: FakeGemini) -> None:
    from google.genai import errors

    with pytest.raises(AuthenticationError, match="API key not valid") as info:
        _backend(fake, api_key="wrong").generate("a banana")
    assert isinstance(info.value.__cause__, errors.ClientError)
    assert info.value.status_code == 400 and not info.value.retryable


def test_hf_only_arguments_are_refused_before_sending(fake: FakeGemini) -> None:
    with pytest.raises(TypeError, match=r"num_inference_steps.*aspect_ratio"):
        _backend(fake).generate("a banana", num_inference_steps=4)
    assert fake.requests == []
