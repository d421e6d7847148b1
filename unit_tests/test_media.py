"""Image/audio model resolution, argument checks, reference images and output encodings: no
weights, no network."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelplug import (
    ConfigurationError,
    GeminiImageModel,
    HFImageModel,
    UnknownModelError,
    UnknownProviderError,
    create_image_backend,
)
from modelplug.media import (
    format_image,
    load_image,
    resolve_media_model,
    split_generation_kwargs,
    wav_bytes,
)


def test_nano_banana_and_catalog_names_resolve() -> None:
    for name in ("gemini:nano-banana", "nano-banana", "GEMINI_2_5_FLASH_IMAGE",
                 GeminiImageModel.GEMINI_2_5_FLASH_IMAGE):
        ref = resolve_media_model("image", name)
        assert str(ref) == "gemini:gemini-2.5-flash-image"
    flux = resolve_media_model("image", "FLUX_2_KLEIN_4B")
    assert flux.info == HFImageModel.FLUX_2_KLEIN_4B.info
    assert flux.info.pipeline_class == "Flux2KleinPipeline"


def test_free_form_hf_ids_and_folders_pass_through() -> None:
    ref = resolve_media_model("image", "hf:my-org/my-pipeline")
    assert (ref.provider, ref.model_id, ref.info) == ("hf", "my-org/my-pipeline", None)


def test_image_and_audio_namespaces_do_not_mix() -> None:
    with pytest.raises(UnknownProviderError, match=r"audio provider 'gemini'.*\['hf'\]"):
        resolve_media_model("audio", "gemini:nano-banana")
    with pytest.raises(ConfigurationError, match="image model"):
        resolve_media_model("audio", HFImageModel.SD_1_5)
    with pytest.raises(UnknownModelError, match="No image catalog model"):
        resolve_media_model("image", "QWEN_3_8B")  # a text model


def test_settings_are_checked_per_provider() -> None:
    with pytest.raises(TypeError, match="n_ctx"):
        create_image_backend("gemini:nano-banana", api_key="k", n_ctx=4)
    with pytest.raises(TypeError, match="in-process"):
        create_image_backend("hf:org/model", timeout=3)


def test_generation_kwargs_split_from_settings() -> None:
    generation, settings = split_generation_kwargs(
        "image", "gemini:nano-banana", {"aspect_ratio": "1:1", "api_key": "k"})
    assert generation == {"aspect_ratio": "1:1"} and settings == {"api_key": "k"}


def test_hf_folder_without_safetensors_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text('{"unet": ["diffusers", "UNet2DConditionModel"]}')
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(ConfigurationError, match="safetensors only"):
        create_image_backend(f"hf:{tmp_path}")


def test_device_and_owned_kwargs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a device"):
        create_image_backend(f"hf:{tmp_path}", model_kwargs={"device": "gpu0"})
    with pytest.raises(ConfigurationError, match="Pass one of them"):
        create_image_backend(f"hf:{tmp_path}", model_kwargs={"device": "cpu",
                                                             "device_map": "balanced"})
    with pytest.raises(ConfigurationError, match="remote code"):
        create_image_backend(f"hf:{tmp_path}", model_kwargs={"custom_pipeline": "x"})


def test_call_arguments_are_checked_before_anything_runs() -> None:
    backend = create_image_backend("gemini:nano-banana", api_key="k")
    with pytest.raises(ConfigurationError, match=r"\['pil', 'path', 'bytes', 'data_url'\]"):
        backend.generate("x", format="jpeg")
    with pytest.raises(ConfigurationError, match="num_images must be a positive"):
        backend.generate("x", num_images=0)
    with pytest.raises(ConfigurationError, match="output_dir"):
        backend.generate("x", format="bytes", output_dir="/tmp")
    with pytest.raises(TypeError, match="strength"):
        backend.generate("x", strength=0.5)


def _png(color=(10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_reference_images_from_every_local_source(tmp_path: Path) -> None:
    data = _png()
    path = tmp_path / "ref.png"
    path.write_bytes(data)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    rgba = Image.new("RGBA", (8, 4), (10, 20, 30, 255))
    for source in (str(path), path, f"file://{path}", data, url, rgba):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (8, 4)
        assert image.getpixel((0, 0)) == (10, 20, 30)
    with pytest.raises(ConfigurationError, match="not a file"):
        load_image(str(tmp_path / "missing.png"))
    with pytest.raises(ConfigurationError, match="could not be read"):
        load_image(b"not an image")
    with pytest.raises(ConfigurationError, match="PIL image; got int"):
        load_image(3)


def test_image_formats(tmp_path: Path) -> None:
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    assert format_image(image, "pil") is image
    png = format_image(image, "bytes")
    assert png.startswith(b"\x89PNG")
    url = format_image(image, "data_url")
    assert base64.b64decode(url.partition(",")[2]) == png
    path = Path(format_image(image, "path", tmp_path / "out"))
    assert path.parent == tmp_path / "out" and path.suffix == ".png"
    assert path.read_bytes() == png


def test_wav_encoding_keeps_rate_channels_and_samples() -> None:
    mono = np.array([0.0, 0.5, -0.5, 1.5], dtype=np.float32)  # 1.5 clips to full scale
    with wave.open(io.BytesIO(wav_bytes(mono, 16_000))) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getnframes()) == (16_000, 1, 4)
        frames = np.frombuffer(wav.readframes(4), dtype="<i2")
    assert frames.tolist() == [0, 16383, -16383, 32767]
    stereo = np.zeros((2, 10), dtype=np.float32)
    with wave.open(io.BytesIO(wav_bytes(stereo, 8_000))) as wav:
        assert (wav.getnchannels(), wav.getnframes()) == (2, 10)


def test_importing_the_packages_loads_no_runtime() -> None:
    code = ("import sys, modelplug, modelplug.media, modelplug.placement, "
            "modelplug.backends.diffusion, modelplug.backends.gemini_image, "
            "langchain_modelplug, llama_index.llms.modelplug\n"
            "print([m for m in ('torch', 'diffusers', 'transformers', 'google.genai') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_runtime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from modelplug import MissingDependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "diffusers" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install 'modelplug\[diffusers\]'"):
        create_image_backend("hf:org/model")
