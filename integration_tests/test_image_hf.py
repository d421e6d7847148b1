"""In-process image generation on a tiny random Stable Diffusion pipeline, loaded from its saved
folder through the real diffusers loading path: counts, sizes, seeds, every output format,
image-to-image from every kind of reference, placement, the shared cache and progress bars."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.server import LoopbackServer
from PIL import Image, ImageChops
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

import modelplug.backends.diffusion as diffusion
from modelplug import ConfigurationError, UnsupportedCapabilityError, create_image_backend
from modelplug.placement import module_bytes
from modelplug.weights import loaded_keys

FAST = {"num_inference_steps": 2, "width": 32, "height": 32}
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def draw(tiny_sd_path: Path):
    return create_image_backend(f"hf:{tiny_sd_path}")


@pytest.fixture(scope="module")
def reference() -> Image.Image:
    """A 40x24 gradient: not square, so derived sizes show."""
    image = Image.new("RGB", (40, 24))
    image.putdata([(x * 6, y * 10, 128) for y in range(24) for x in range(40)])
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


def test_loads_the_saved_pipeline_and_places_it_on_the_cpu(draw, monkeypatch, capfd) -> None:
    capfd.readouterr()
    seen = []
    real = diffusion.plan_placement
    monkeypatch.setattr(diffusion, "plan_placement",
                        lambda *a, **k: seen.append((a, k)) or real(*a, **k))
    images = draw.generate("a red cat", num_images=2, seed=1, **FAST)
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    assert not _same(*images)  # two samples, not one repeated
    assert "Loading pipeline components" not in capfd.readouterr().err  # no terminal: silent
    placement = draw.placement
    assert (placement.strategy, placement.device, placement.reason) == ("device", "cpu", "no GPU")
    pipe = draw._loaded().model.pipe
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.device.type == "cpu"
    # The decision was taken on the measured sizes of the loaded components.
    [(args, _)] = seen
    sizes = [module_bytes(m) for m in pipe.components.values() if hasattr(m, "parameters")]
    assert args[:3] == (sum(sizes), max(sizes), [])


def test_same_seed_same_pixels(draw) -> None:
    first = draw.generate("a red cat", seed=7, **FAST)[0]
    again = draw.generate("a red cat", seed=7, **FAST)[0]
    other = draw.generate("a red cat", seed=8, **FAST)[0]
    assert _same(first, again)
    assert not _same(first, other)


def test_every_output_format_carries_the_same_image(draw, tmp_path: Path) -> None:
    def gen(fmt: str, **kwargs):
        [out] = draw.generate("a blue sky", seed=3, format=fmt, **FAST, **kwargs)
        return out

    pil = gen("pil")
    png = gen("bytes")
    url = gen("data_url")
    path = gen("path", output_dir=tmp_path / "images")
    assert isinstance(pil, Image.Image)
    assert png.startswith(b"\x89PNG")
    assert url.startswith("data:image/png;base64,")
    assert Path(path).parent == tmp_path / "images" and path.endswith(".png")
    for decoded in (Image.open(io.BytesIO(png)), Image.open(path),
                    Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2])))):
        assert _same(pil, decoded.convert("RGB"))


def test_generation_arguments_reach_the_pipeline(draw) -> None:
    plain = draw.generate("a dog", seed=5, **FAST)[0]
    negative = draw.generate("a dog", seed=5, negative_prompt="blue", **FAST)[0]
    guided = draw.generate("a dog", seed=5, guidance_scale=1.0, **FAST)[0]
    assert not _same(plain, negative) and not _same(plain, guided)
    assert draw.generate("a dog", seed=5, num_inference_steps=1, width=48,
                         height=16)[0].size == (48, 16)


@pytest.fixture(scope="module")
def image_server(reference: Image.Image) -> Iterator[str]:
    data = _png(reference)

    async def serve(request):
        return Response(data, media_type="image/png")

    server = LoopbackServer(Starlette(routes=[Route("/ref.png", serve)])).start()
    yield f"{server.url}/ref.png"
    server.stop()


def test_img2img_from_every_kind_of_reference(draw, reference: Image.Image, tmp_path: Path,
                                              image_server: str) -> None:
    path = tmp_path / "ref.png"
    path.write_bytes(_png(reference))
    data_url = "data:image/png;base64," + base64.b64encode(_png(reference)).decode()
    sources = [reference, str(path), path.read_bytes(), data_url, image_server]
    outputs = [draw.generate("in winter", reference_image=source, seed=2, strength=0.5,
                             num_inference_steps=2)[0] for source in sources]
    # width/height come from the reference; each source is the same picture, so same pixels.
    assert all(out.size == (40, 24) for out in outputs)
    assert all(_same(outputs[0], out) for out in outputs[1:])
    assert type(draw._loaded().model.img2img()).__name__ == "StableDiffusionImg2ImgPipeline"
    stronger = draw.generate("in winter", reference_image=reference, seed=2, strength=1.0,
                             num_inference_steps=2)[0]
    assert not _same(outputs[0], stronger)
    resized = draw.generate("in winter", reference_image=reference, seed=2, strength=0.5,
                            num_inference_steps=2, width=32, height=32)[0]
    assert resized.size == (32, 32)


def test_strength_without_a_reference_is_refused(draw) -> None:
    with pytest.raises(ConfigurationError, match="reference_image"):
        draw.generate("a cat", strength=0.5, **FAST)


async def test_agenerate(draw) -> None:
    [url] = await draw.agenerate("a cat", seed=1, format="data_url", **FAST)
    assert url.startswith("data:image/png;base64,")


def test_backends_naming_the_same_pipeline_share_it(draw, tiny_sd_path: Path) -> None:
    draw.generate("a cat", **FAST)
    other = create_image_backend(f"hf:{tiny_sd_path}")
    keys = loaded_keys()
    assert other._loaded().model is draw._loaded().model
    assert loaded_keys() == keys


def test_device_override_pins_and_load_progress_shows_on_request(tiny_sd_path: Path,
                                                                   capfd) -> None:
    capfd.readouterr()
    pinned = create_image_backend(f"hf:{tiny_sd_path}", model_kwargs={"device": "cpu"},
                                  progress=True)
    pinned.generate("a cat", **FAST)
    assert (pinned.placement.strategy, pinned.placement.reason) == (
        "device", "pinned by device='cpu'")
    assert "Loading pipeline components" in capfd.readouterr().err
    from diffusers.utils import logging as diffusers_logging

    # The library-wide switch is back as it was once the load is over.
    assert diffusers_logging.is_progress_bar_enabled()


def test_progress_bars_only_on_request(draw, tiny_sd_path: Path, capfd) -> None:
    draw.generate("a cat", **FAST)  # stderr is no terminal here: silent
    assert "2/2" not in capfd.readouterr().err
    loud = create_image_backend(f"hf:{tiny_sd_path}", progress=True)
    loud.generate("a cat", **FAST)
    assert "2/2" in capfd.readouterr().err
    draw.generate("a cat", **FAST)  # the shared pipeline is quiet again for the quiet backend
    assert "2/2" not in capfd.readouterr().err


def test_a_folder_that_is_no_pipeline(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigurationError, match="not a diffusers pipeline"):
        create_image_backend(f"hf:{tmp_path}")


def test_a_pipeline_without_img2img_says_so(draw, reference: Image.Image,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers

    loaded = create_image_backend(draw.ref)._loaded().model
    monkeypatch.setattr(loaded, "_img2img", None)

    def refuse(pipe, **kwargs):
        raise ValueError("AutoPipeline can't find a pipeline linked to FooPipeline")

    monkeypatch.setattr(diffusers.AutoPipelineForImage2Image, "from_pipe", refuse)
    with pytest.raises(UnsupportedCapabilityError, match="no image-to-image counterpart"):
        draw.generate("x", reference_image=reference, num_inference_steps=1)
