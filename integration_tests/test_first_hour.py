"""A new user's first hour (issue 20): an output budget by default, one truthful answer about
each model, the default pick said out loud, quiet output, and fix hints worded where the user is.

The command line's own cases are in test_cli.py; these go through the Python surface a user
starts from (``ChatModelPlug``, ``ModelPlugEmbeddings``, ``ModelPlugEmbedding``,
``resolve_model``) on the real SmolLM2 models.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
from llama_index.embeddings.modelplug import ModelPlugEmbedding

from langchain_modelplug import ChatModelPlug, ModelPlugEmbeddings
from modelplug import ModelNotFoundError, catalog, create_backend, local, resolve_model
from modelplug.backends.base import DEFAULT_MAX_TOKENS
from modelplug.profile import Profile, read_gguf_info

LONG = "Write the numbers from 1 to 1000, separated by commas."

# -- 1. an output budget by default ---------------------------------------------------------------


def test_an_in_process_answer_stops_at_the_default_budget_and_says_so() -> None:
    message = ChatModelPlug(model="llamacpp:smollm2", temperature=0).invoke(LONG)
    assert message.usage_metadata["output_tokens"] == DEFAULT_MAX_TOKENS
    assert message.response_metadata["finish_reason"] == "length"


def test_an_hf_model_takes_its_budget_from_its_generation_config(
        tmp_path: Path, smollm2_hf_path: Path) -> None:
    folder = tmp_path / "smollm2-budget"
    folder.mkdir()
    for item in smollm2_hf_path.iterdir():
        if item.name != "generation_config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((smollm2_hf_path / "generation_config.json").read_text()) \
        if (smollm2_hf_path / "generation_config.json").is_file() else {}
    (folder / "generation_config.json").write_text(json.dumps({**config, "max_new_tokens": 7}))
    message = ChatModelPlug(model=f"hf:{folder}", temperature=0).invoke(LONG)
    assert message.usage_metadata["output_tokens"] == 7
    assert message.response_metadata["finish_reason"] == "length"
    # The request's own max_tokens still wins over the model's default.
    message = ChatModelPlug(model=f"hf:{folder}", temperature=0, max_tokens=3).invoke(LONG)
    assert message.usage_metadata["output_tokens"] == 3


def _gguf_header(path: Path, meta: dict[str, object]) -> Path:
    """A GGUF file holding only metadata (strings and float32 values), no tensors."""
    import struct

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    body = b""
    for key, value in meta.items():
        body += string(key) + (struct.pack("<I", 8) + string(value) if isinstance(value, str)
                               else struct.pack("<If", 6, value))
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta)) + body)
    return path


def test_the_gguf_recommended_sampling_settings_are_read(tmp_path: Path) -> None:
    path = _gguf_header(tmp_path / "m.gguf", {
        "general.architecture": "llama", "general.sampling.temp": 0.25,
        "general.sampling.top_p": 0.5, "general.sampling.penalty_repeat": 1.5})
    assert read_gguf_info(str(path)).sampling == {"temp": 0.25, "top_p": 0.5,
                                                  "repeat_penalty": 1.5}


def test_the_gguf_s_recommended_sampling_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GGUF that recommends temperature 0 answers greedily whatever the seed (SmolLM2's own
    GGUF recommends nothing, so its metadata is given that recommendation here)."""
    from modelplug.backends import llamacpp

    real = llamacpp.read_gguf_info
    monkeypatch.setattr(llamacpp, "read_gguf_info",
                        lambda path: dataclasses.replace(real(path), sampling={"temp": 0.0}))
    prompt = "Tell me a short story about a cat."
    greedy = ChatModelPlug(model="llamacpp:smollm2", max_tokens=24, temperature=0)
    llm = ChatModelPlug(model="llamacpp:smollm2", max_tokens=24)
    answers = {llm.invoke(prompt, seed=seed).content for seed in (1, 2, 3)}
    assert answers == {greedy.invoke(prompt).content}
    # The request's own temperature still wins: sampled answers differ by seed.
    hot = {llm.invoke(prompt, seed=seed, temperature=1.5).content for seed in (1, 2, 3)}
    assert len(hot) > 1


# -- 4. one truthful answer about each model ----------------------------------------------------


def _fake_hub_cache(root: Path, repo: str) -> None:
    """A Hugging Face cache entry with a chat model's config, template and (empty) weights:
    enough for the hf backend's profile, which never loads weights."""
    entry = root / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                      "max_position_embeddings": 8192}))
    (snapshot / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}))
    (snapshot / "model.safetensors").write_bytes(b"")


def _backend_settings(key: str, smollm2_path: Path) -> dict[str, object]:
    spec = resolve_model(key).spec
    if spec.api_key_env:
        return {"api_key": "sk-test"}
    if spec.key == "llamacpp" and key != "llamacpp:smollm2":
        return {"model_path": str(smollm2_path)}  # a GGUF to read; the catalog id has no file
    return {}


def test_catalog_refs_and_profiles_agree_on_tools_and_structured_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2_path: Path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for member in catalog.HFModel:
        _fake_hub_cache(tmp_path, member.info.id)
    for member in catalog.all_models():
        key = member.info.key
        ref = resolve_model(key)
        profile = create_backend(key, **_backend_settings(key, smollm2_path)).profile()
        assert (ref.tools, ref.structured_output) == \
            (profile.tool_calling, profile.structured_output), key
        if member.info.kind == "chat":
            assert ref.structured_output is True, key  # every catalog chat model follows a schema
    llm = ChatModelPlug(model="llamacpp:smollm2")
    assert resolve_model("llamacpp:smollm2").tools is True
    assert llm.profile["tool_calling"] is True and llm.profile["structured_output"] is True


def test_local_refs_and_profiles_agree(smollm2_hf_path: Path) -> None:
    for ref in [*local.available_models(), resolve_model(f"hf:{smollm2_hf_path}")]:
        profile = create_backend(ref).profile()
        assert (ref.tools, ref.structured_output) == \
            (profile.tool_calling, profile.structured_output), str(ref)
        assert Profile.from_ref(ref).tool_calling == profile.tool_calling


# -- 5. say what was picked ---------------------------------------------------------------------


def test_the_default_pick_is_logged_once_with_where_it_came_from(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("MODELPLUG_MODEL", raising=False)
    monkeypatch.setattr(local, "_last_pick", [None])
    with caplog.at_level(logging.INFO, logger="modelplug"):
        first, second = ChatModelPlug(), ChatModelPlug()
    picks = [r for r in caplog.records if r.getMessage().startswith("No model was named")]
    assert first.model == second.model == str(local.available_models()[0])
    assert len(picks) == 1 and picks[0].levelno == logging.INFO
    assert f"using {first.model!r}, from " in picks[0].getMessage()
    if first.model == "llamacpp:smollm2":
        assert "the GGUF file " in picks[0].getMessage()
        assert "SmolLM2-135M-Instruct.Q4_1.gguf" in picks[0].getMessage()


def test_a_bad_default_model_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPLUG_MODEL", "llamacpp:nope")
    with pytest.raises(ModelNotFoundError) as err:
        ChatModelPlug()
    assert str(err.value).startswith("$MODELPLUG_MODEL='llamacpp:nope': 'llamacpp:nope' needs "
                                     "the setting model_path")
    monkeypatch.setenv("MODELPLUG_MODEL", "nope:model")
    with pytest.raises(ValueError, match=r"^\$MODELPLUG_MODEL='nope:model': Unknown provider"):
        ChatModelPlug()


# -- 6. quiet output ----------------------------------------------------------------------------


def _stderr_of(code: str) -> str:
    """What a script writes to stderr when stderr is a pipe, not a terminal."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)
    return done.stderr


def test_a_default_llamacpp_embeddings_load_writes_nothing_to_stderr() -> None:
    code = ("from langchain_modelplug import ModelPlugEmbeddings\n"
            "from llama_index.embeddings.modelplug import ModelPlugEmbedding\n"
            "assert len(ModelPlugEmbeddings(model='llamacpp:smollm2').embed_query('hi')) == 576\n"
            "assert len(ModelPlugEmbedding(model='llamacpp:smollm2')"
            ".get_text_embedding('hi')) == 576\n")
    assert _stderr_of(code) == ""
    loud = _stderr_of(code.replace("model='llamacpp:smollm2')", "model='llamacpp:smollm2', "
                                   "verbose=True)", 1))
    assert "llama_" in loud  # verbose=True shows llama.cpp's own log


def test_a_default_hf_load_shows_no_progress_bar_in_a_pipe(smollm2_hf_path: Path) -> None:
    code = ("from langchain_modelplug import ModelPlugEmbeddings\n"
            f"e = ModelPlugEmbeddings(model='hf:{smollm2_hf_path}')\n"
            "assert len(e.embed_query('hi')) == 576\n")
    assert "Loading weights" not in _stderr_of(code)
    shown = _stderr_of(code.replace(f"hf:{smollm2_hf_path}'", f"hf:{smollm2_hf_path}', "
                                    "progress=True"))
    assert "Loading weights" in shown


# -- 7. fix hints worded where the user is ------------------------------------------------------


@pytest.mark.parametrize("adapter", [ChatModelPlug, ModelPlugEmbeddings, ModelPlugEmbedding],
                         ids=lambda cls: cls.__name__)
def test_a_missing_setting_is_hinted_as_the_adapter_s_own_arguments(adapter: type) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        adapter(model="llamacpp:my-model")
    assert str(err.value).endswith(f"For example: {adapter.__name__}(model='llamacpp:my-model', "
                                   "model_path='/models/model.gguf').")
    assert err.value.setting == "model_path"
    assert str(err.value).count("ModelPlug") == 1  # no other class is suggested


def test_core_error_messages_name_no_adapter_class() -> None:
    """The core states the fact; only adapters and the command line word the fix."""
    core = Path(local.__file__).parent
    for source in core.rglob("*.py"):
        if source.name == "cli.py":
            continue
        for n, line in enumerate(source.read_text().splitlines(), start=1):
            stripped = line.strip()
            if stripped.startswith(("f\"", "\"", "f'", "'")) and "ModelPlug(" in stripped:
                pytest.fail(f"{source.relative_to(core)}:{n} names an adapter class in a "
                            f"message: {stripped}")


def test_missing_api_key_hint_names_the_embeddings_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError) as err:
        ModelPlugEmbeddings(model="openai:text-embedding-3-small")
    assert str(err.value).endswith(
        "For example: ModelPlugEmbeddings(model='openai:text-embedding-3-small', api_key=...).")


@pytest.fixture(autouse=True)
def _no_default_model_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    if "MODELPLUG_MODEL" in os.environ:
        monkeypatch.delenv("MODELPLUG_MODEL")

