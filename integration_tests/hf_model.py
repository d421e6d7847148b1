"""Session fixture: the SmolLM2 GGUF converted once per machine into a transformers folder.

No hub access exists here, so the ``hf:`` backend is tested on the same weights the llama.cpp
tests use: transformers dequantizes the GGUF, and its state dict is copied into a plain model
built from the config (a GGUF-loaded model refuses ``save_pretrained``). The folder lives in the
user cache, outside the work tree, and is written under a temporary name and then renamed, so an
interrupted conversion never leaves a half folder behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from modelplug.local import models_dir

HF_FOLDER_NAME = "smollm2-hf"
#: Files that make the folder complete (written last: the folder is renamed into place).
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def smollm2_hf_dir() -> Path:
    return models_dir() / HF_FOLDER_NAME


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Write a safetensors transformers folder (fp32) with the tokenizer and chat template."""
    if all((out_dir / name).is_file() for name in REQUIRED):
        return out_dir
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                      dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    if tokenizer.pad_token is None:  # batching needs one; SmolLM2 ships <|endoftext|> as pad
        tokenizer.pad_token = tokenizer.eos_token

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the renamed folder is a normal one
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process finished first: keep its folder
            if not all((out_dir / n).is_file() for n in REQUIRED):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@pytest.fixture(scope="session")
def smollm2_hf_path(smollm2_path: Path) -> Path:
    """The transformers folder of SmolLM2-135M-Instruct (converted on first use)."""
    return convert_gguf_to_hf(smollm2_path, smollm2_hf_dir())
