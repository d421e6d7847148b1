"""``modelplug serve MODEL --modality image|audio``: the server in front of the tiny random Stable
Diffusion pipeline and the tiny random MusicGen (each loaded from its saved folder), run by real
uvicorn on loopback and called with the official openai SDK (``images.generate``,
``audio.speech.create``): the backend's own output passes through, generation defaults and
request fields reach it, and bad requests are 400s naming the field."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fakes.server import LoopbackServer

from modelplug import ConfigurationError, create_audio_backend, create_image_backend
from modelplug.server import create_app

pytestmark = pytest.mark.usefixtures("torch_one_thread")
KEY = "media-key"


def serve_app(app) -> Iterator[openai.OpenAI]:
    server = LoopbackServer(app).start()
    yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    server.stop()


@pytest.fixture(scope="module")
def draw(tiny_sd_path: Path):
    return create_image_backend(f"hf:{tiny_sd_path}")


@pytest.fixture(scope="module")
def images(tiny_sd_path: Path) -> Iterator[openai.OpenAI]:
    """The image model by its name, one denoising step by default."""
    yield from serve_app(create_app(f"hf:{tiny_sd_path}", modality="image", api_key=KEY,
                                    num_inference_steps=1))


@pytest.fixture(scope="module")
def music(tiny_musicgen_path: Path):
    return create_audio_backend(f"hf:{tiny_musicgen_path}")


@pytest.fixture(scope="module")
def speech(music) -> Iterator[openai.OpenAI]:
    """A ready audio backend: it names its own modality."""
    yield from serve_app(create_app(music, api_key=KEY, duration_s=0.25))


def pngs(response) -> list[bytes]:
    return [base64.b64decode(d.b64_json) for d in response.data]


def test_images_pass_the_backends_pngs_through(images, draw, tiny_sd_path: Path) -> None:
    served = images.images.generate(prompt="a red cat", n=2, size="32x24",
                                    extra_body={"seed": 3})
    direct = draw.generate("a red cat", num_images=2, width=32, height=24, seed=3,
                           num_inference_steps=1, format="bytes")
    assert pngs(served) == direct
    from PIL import Image

    assert [Image.open(io.BytesIO(p)).size for p in pngs(served)] == [(32, 24), (32, 24)]
    [model] = images.models.list().data
    assert model.id == f"hf:{tiny_sd_path}" and model.owned_by == "hf"


def test_request_fields_override_the_servers_defaults(images) -> None:
    def one(**extra) -> bytes:
        return pngs(images.images.generate(prompt="a blue sky", size="32x32",
                                           extra_body={"seed": 5, **extra}))[0]

    default = one()
    assert one(num_inference_steps=1) == default  # the default is one step
    assert one(num_inference_steps=2) != default  # the request's own reaches the pipeline
    assert one(seed=6) != default


def test_speech_is_the_backends_wav(speech, music) -> None:
    raw = speech.audio.speech.with_raw_response.create(
        model="ignored", voice="alloy", input="calm piano", response_format="wav",
        extra_body={"seed": 2})
    assert raw.headers["content-type"] == "audio/wav"
    wav = raw.parse().content
    assert wav == music.generate("calm piano", duration_s=0.25, seed=2, format="bytes")[0]
    with wave.open(io.BytesIO(wav)) as reader:
        assert reader.getframerate() == music.sample_rate == 800
        short = reader.getnframes()
    longer = speech.audio.speech.create(model="m", voice="alloy", input="calm piano",
                                        extra_body={"seed": 2, "duration_s": 0.75}).read()
    with wave.open(io.BytesIO(longer)) as reader:
        assert reader.getnframes() > 2 * short  # the request's duration_s beat the default


@pytest.mark.parametrize(("body", "param", "named"), [
    ({}, "prompt", "Missing required parameter: 'prompt'"),
    ({"prompt": "  "}, "prompt", "a non-empty string"),
    ({"prompt": "cat", "size": "big"}, "size", "'WIDTHxHEIGHT'"),
    ({"prompt": "cat", "size": "0x32"}, "size", "1 to 4096"),
    ({"prompt": "cat", "n": 0}, "n", ">= 1"),
    ({"prompt": "cat", "n": 11}, "n", "<= 10"),
    ({"prompt": "cat", "response_format": "url"}, "response_format", "only 'b64_json'"),
    ({"prompt": "cat", "quality": "hd"}, "quality", "Unrecognized request argument"),
    ({"prompt": "cat", "num_inference_steps": 0}, "num_inference_steps", ">= 1"),
    ({"prompt": "cat", "seed": "one"}, "seed", "expected an integer"),
    ({"prompt": "cat", "strength": 0.5}, "strength", "Unrecognized request argument"),
])
def test_bad_image_requests_are_400s_naming_the_field(images, body, param, named) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        images.post("/images/generations", body=body, cast_to=httpx.Response)
    error = caught.value.body
    assert error["param"] == param and named in error["message"], error


@pytest.mark.parametrize(("body", "param", "named"), [
    ({"voice": "alloy"}, "input", "Missing required parameter: 'input'"),
    ({"input": "x", "response_format": "mp3"}, "response_format", "only 'wav'"),
    ({"input": "x", "speed": 2}, "speed", "leave 'speed' unset or 1"),
    ({"input": "x", "duration_s": -1}, "duration_s", "> 0"),
    ({"input": "x", "instructions": "cheerful"}, "instructions", "takes: input, voice"),
])
def test_bad_speech_requests_are_400s_naming_the_field(speech, body, param, named) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        speech.post("/audio/speech", body=body, cast_to=httpx.Response)
    error = caught.value.body
    assert error["param"] == param and named in error["message"], error


def test_chat_on_a_media_server_names_the_route_served(images, speech) -> None:
    with pytest.raises(openai.NotFoundError, match="at POST /v1/images/generations"):
        images.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="at POST /v1/audio/speech"):
        speech.images.generate(prompt="a cat")
    with pytest.raises(openai.AuthenticationError):  # the key guards the media routes too
        speech.with_options(api_key="wrong").audio.speech.create(model="m", voice="v",
                                                                 input="x")


def test_media_settings_are_checked_when_the_app_is_built(tiny_sd_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="n_threads"):
        create_app(f"hf:{tiny_sd_path}", modality="image", n_threads=1)
    with pytest.raises(ConfigurationError, match="'video'"):
        create_app(f"hf:{tiny_sd_path}", modality="video")
    with pytest.raises(ConfigurationError, match="no local default"):
        create_app(modality="audio")
