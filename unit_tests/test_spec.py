"""Model strings, catalog members and bare names, and every failure mode's message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import modelplug
from modelplug import (
    AmbiguousModelError,
    AnthropicModel,
    HFModel,
    OllamaModel,
    UnknownModelError,
    UnknownProviderError,
    resolve_model,
)
from modelplug.errors import ConfigurationError


@pytest.mark.parametrize(
    ("text", "provider", "model_id"),
    [
        ("anthropic:claude-sonnet-4-6", "anthropic", "claude-sonnet-4-6"),
        ("ollama:qwen3.5:9b", "ollama", "qwen3.5:9b"),
        ("vllm:Qwen/Qwen3-8B", "vllm", "Qwen/Qwen3-8B"),
        ("hf:/models/some folder", "hf", "/models/some folder"),
        ("llamacpp:smollm2", "llamacpp", "smollm2"),
        ("lmstudio:qwen3.5-9b", "lmstudio", "qwen3.5-9b"),
        ("ollama:hf.co/org/repo:Q4_K_M", "ollama", "hf.co/org/repo:Q4_K_M"),
        ("  OLLAMA:llama3.2  ", "ollama", "llama3.2"),
    ],
)
def test_model_strings_keep_colons_in_ids(text: str, provider: str, model_id: str) -> None:
    ref = resolve_model(text)
    assert (ref.provider, ref.model_id) == (provider, model_id)
    assert str(ref) == f"{provider}:{model_id}"


def test_catalog_models_carry_capabilities() -> None:
    ref = resolve_model("anthropic:claude-sonnet-4-6")
    assert (ref.tools, ref.thinking, ref.vision) == (True, True, True)
    assert ref.context_window == 200_000 and ref.max_output == 64_000
    assert ref.info is AnthropicModel.CLAUDE_SONNET_4_6.info
    assert resolve_model("ollama:qwen3.5:9b").vision is False  # a row says what is missing too


def test_free_form_ids_have_unknown_capabilities() -> None:
    ref = resolve_model("vllm:my-finetune")
    assert (ref.tools, ref.vision, ref.context_window, ref.info) == (None, None, None, None)


def test_flags_declare_capabilities_of_ad_hoc_models() -> None:
    ref = resolve_model("vllm:my-model;tools,vision")
    assert (ref.tools, ref.vision, ref.thinking) == (True, True, False)
    assert ref.model_id == "my-model"


def test_flags_are_the_escape_hatch_for_closed_catalogs() -> None:
    ref = resolve_model("anthropic:claude-next-9;tools,thinking")
    assert (ref.provider, ref.model_id, ref.tools, ref.thinking) == (
        "anthropic", "claude-next-9", True, True)


def test_enum_members_and_bare_names() -> None:
    assert resolve_model(AnthropicModel.CLAUDE_SONNET_4_6) == resolve_model(
        "anthropic:claude-sonnet-4-6")
    assert str(resolve_model("CLAUDE_SONNET_4_6")) == "anthropic:claude-sonnet-4-6"
    assert str(resolve_model("claude_sonnet_4_6")) == "anthropic:claude-sonnet-4-6"
    assert str(resolve_model("claude-opus-4-7")) == "anthropic:claude-opus-4-7"  # a catalog id
    assert str(resolve_model(OllamaModel.QWEN_3_5_9B)) == "ollama:qwen3.5:9b"
    ref = resolve_model("vllm:x")
    assert resolve_model(ref) is ref


def test_unknown_provider_lists_installed_providers() -> None:
    with pytest.raises(UnknownProviderError) as err:
        resolve_model("foo:bar")
    message = str(err.value)
    assert message.startswith("Unknown provider 'foo'. Available providers (with installed deps): [")
    for key in modelplug.installed_providers():
        assert repr(key) in message
    assert isinstance(err.value, ValueError)


def test_unknown_cloud_id_lists_known_ids() -> None:
    with pytest.raises(UnknownModelError) as err:
        resolve_model("anthropic:claude-nonsense")
    assert str(err.value).startswith(
        "Provider 'anthropic' has no model id 'claude-nonsense'. Available: ['claude-fable-5', "
        "'claude-haiku-4-5', 'claude-opus-4-6', 'claude-opus-4-7', 'claude-opus-4-8', "
        "'claude-sonnet-4-6']."
    )
    assert "'anthropic:claude-nonsense;tools'" in str(err.value)  # the escape hatch is named
    with pytest.raises(ValueError, match="Provider 'openai' has no model id 'gpt-99'"):
        resolve_model("openai:gpt-99")


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("ollama:", "has an empty model id. Write it as 'ollama:<model_id>'"),
        ("vllm:m;tools,teleport", "Unknown capability flag(s) ['teleport']"),
        ("no_such_model", "No catalog model is named 'no_such_model'"),
        ("", "Expected a model string like 'provider:model_id'"),
    ],
)
def test_malformed_model_strings(bad: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        resolve_model(bad)
    assert fragment in str(err.value)


def test_non_string_model_is_rejected_with_its_value() -> None:
    with pytest.raises(ValueError, match="got 42"):
        resolve_model(42)  # type: ignore[arg-type]


def test_ambiguous_bare_name_with_nothing_local_lists_the_options() -> None:
    with pytest.raises(AmbiguousModelError) as err:
        resolve_model("QWEN_3_8B")
    assert str(err.value) == (
        "Model name 'QWEN_3_8B' is ambiguous and none of its providers has it available "
        "locally. Pin one with its 'provider:model_id' string: ['ollama:qwen3:8b', "
        "'hf:Qwen/Qwen3-8B', 'llamacpp:qwen3-8b', 'vllm:Qwen/Qwen3-8B']."
    )


def test_ambiguous_bare_name_prefers_the_locally_cached_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A real Hugging Face cache layout with Qwen3-8B in it: a causal LM, its chat template and
    # safetensors weights (what local discovery counts as a usable chat model).
    snapshot = tmp_path / "models--Qwen--Qwen3-8B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"]}')
    (snapshot / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    (snapshot / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="modelplug"):
        ref = resolve_model("QWEN_3_8B")
    assert ref.info is HFModel.QWEN_3_8B.info
    assert "Resolved ambiguous model name 'QWEN_3_8B' to 'hf:Qwen/Qwen3-8B'" in caplog.text
