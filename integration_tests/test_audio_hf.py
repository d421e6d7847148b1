"""In-process text-to-audio on a tiny random MusicGen (transformers' text-to-audio path), loaded
from its saved folder: durations, seeds, counts and every output format."""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path

import numpy as np
import pytest

from modelplug import ConfigurationError, UnsupportedCapabilityError, create_audio_backend

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def music(tiny_musicgen_path: Path):
    return create_audio_backend(f"hf:{tiny_musicgen_path}")


def test_clips_follow_duration_and_count(music) -> None:
    short = music.generate("calm piano", duration_s=0.25, seed=1)
    long_ = music.generate("calm piano", duration_s=0.75, seed=1, num_audio=2)
    assert music.sample_rate == 800
    assert len(short) == 1 and len(long_) == 2
    assert all(isinstance(c, np.ndarray) and c.dtype == np.float32 and c.ndim == 1
               for c in short + long_)
    assert long_[0].shape[0] > 2 * short[0].shape[0]  # 3x the tokens, minus the codebook delay
    assert music._loaded().model.placement.device == "cpu"


def test_same_seed_same_samples(music) -> None:
    a = music.generate("drum beat", duration_s=0.3, seed=4)[0]
    b = music.generate("drum beat", duration_s=0.3, seed=4)[0]
    c = music.generate("drum beat", duration_s=0.3, seed=5)[0]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_every_output_format(music, tmp_path: Path) -> None:
    def gen(fmt: str, **kwargs):
        [out] = music.generate("calm piano", duration_s=0.3, seed=2, format=fmt, **kwargs)
        return out

    clip = gen("numpy")
    wav = gen("bytes")
    url = gen("data_url")
    path = gen("path", output_dir=tmp_path)
    assert url.startswith("data:audio/wav;base64,")
    assert Path(path).suffix == ".wav" and Path(path).read_bytes() == wav
    assert base64.b64decode(url.partition(",")[2]) == wav
    with wave.open(io.BytesIO(wav)) as reader:
        assert reader.getframerate() == 800 and reader.getnframes() == clip.shape[0]
        pcm = np.frombuffer(reader.readframes(clip.shape[0]), dtype="<i2")
    expected = (np.clip(clip, -1, 1) * 32767).astype("<i2")
    assert np.array_equal(pcm, expected)


def test_diffusers_only_arguments_are_refused(music) -> None:
    with pytest.raises(UnsupportedCapabilityError, match="num_inference_steps"):
        music.generate("calm piano", num_inference_steps=4)
    with pytest.raises(ConfigurationError, match="duration_s must be a positive"):
        music.generate("calm piano", duration_s=0)


async def test_agenerate(music) -> None:
    [wav] = await music.agenerate("calm piano", duration_s=0.2, format="bytes")
    assert wav[:4] == b"RIFF"


# -- a diffusers audio pipeline (AudioLDM) -------------------------------------------------------


@pytest.fixture(scope="module")
def audioldm(tiny_audioldm_path: Path):
    return create_audio_backend(f"hf:{tiny_audioldm_path}")


def test_diffusers_audio_pipeline(audioldm) -> None:
    # 0.016 s at 16 kHz: the vocoder's 4x upsampling of 64 mel frames gives 256 samples.
    clips = audioldm.generate("calm piano", duration_s=0.016, num_inference_steps=2, seed=1,
                              num_audio=2)
    assert audioldm.sample_rate == 16_000
    assert [c.shape for c in clips] == [(256,), (256,)]
    assert not np.array_equal(*clips)
    [longer] = audioldm.generate("calm piano", duration_s=0.032, num_inference_steps=2, seed=1)
    assert longer.shape == (512,)
    assert type(audioldm._loaded().model.pipe).__name__ == "AudioLDMPipeline"


def test_diffusers_audio_same_seed_same_samples(audioldm) -> None:
    def gen(seed: int, steps: int = 2):
        return audioldm.generate("drums", duration_s=0.016, num_inference_steps=steps,
                                 seed=seed)[0]

    assert np.array_equal(gen(3), gen(3))
    assert not np.array_equal(gen(3), gen(4))
    assert not np.array_equal(gen(3), gen(3, steps=1))  # num_inference_steps reaches the pipeline


def test_diffusers_audio_wav(audioldm, tmp_path: Path) -> None:
    [path] = audioldm.generate("drums", duration_s=0.016, num_inference_steps=1, format="path",
                               output_dir=tmp_path)
    with wave.open(path) as reader:
        assert (reader.getframerate(), reader.getnframes()) == (16_000, 256)
