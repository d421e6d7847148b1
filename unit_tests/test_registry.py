"""Provider rows, extras, kwargs checks and import hygiene."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from langchain_modelplug import ChatModelPlug
from modelplug import MissingDependencyError, create_backend, get_provider, providers
from modelplug.backends import backend_class, build_backend
from modelplug.registry import STANDARD_PARAMS, ProviderSpec, check_kwargs

SEED_TEXT_PROVIDERS = {
    # key: (extra, api key variable, default endpoint host:port or None)
    "ollama": ("ollama", None, "localhost:11434"),
    "hf": ("hf", None, None),
    "llamacpp": ("llamacpp", None, None),
    "anthropic": ("anthropic", "ANTHROPIC_API_KEY", "api.anthropic.com"),
    "openai": ("openai", "OPENAI_API_KEY", "api.openai.com"),
    "gemini": ("openai", "GOOGLE_API_KEY", "generativelanguage.googleapis.com"),
    "lmstudio": ("openai", None, "localhost:1234"),
    "ollama-openai": ("openai", None, "localhost:11434"),
    "hf-openai": ("openai", None, "localhost:8000"),
    "vllm": ("openai", None, "localhost:8000"),
    "llamaserver": ("openai", None, "localhost:8080"),
    "sglang": ("openai", None, "localhost:30000"),
}


@pytest.mark.parametrize("key", sorted(SEED_TEXT_PROVIDERS))
def test_every_seed_text_provider_has_its_row(key: str) -> None:
    extra, env, endpoint = SEED_TEXT_PROVIDERS[key]
    spec = get_provider(key)
    assert spec.extra == extra
    assert spec.api_key_env == env
    if endpoint is None:
        assert spec.base_url is None
    else:
        assert endpoint in spec.base_url
    assert ":" in spec.backend  # "module:Class", imported only on use


def test_compatible_clouds_are_data_rows() -> None:
    for key in ("deepseek", "openrouter", "groq", "together", "fireworks", "mistral", "xai",
                "perplexity", "deepinfra"):
        spec = providers()[key]
        assert spec.backend == "modelplug.backends.openai_compat:OpenAICompatBackend"
        assert spec.api_key_env and spec.api_key_env.endswith("_API_KEY")
        assert spec.base_url.startswith("https://")


def test_a_row_without_completions_refuses_them_before_any_request() -> None:
    # has_completions=False (Gemini's OpenAI-compatible endpoint): refused offline, by the row.
    from modelplug import CompletionRequest, UnsupportedCapabilityError

    backend = create_backend("gemini:gemini-2.5-flash", api_key="test-key")
    with pytest.raises(UnsupportedCapabilityError, match=r"has no /completions endpoint; use "
                                                         r"chat completion for 'gemini:' models"):
        backend.complete(CompletionRequest(prompt="x"))
    backend.settings.update(base_url="http://127.0.0.1:9/v1", max_retries=0)  # nothing listens
    spec = ProviderSpec(**{**vars(backend.spec), "has_completions": True})
    with pytest.raises(Exception) as info:
        type(backend)(backend.ref, spec, backend.settings).complete(CompletionRequest(prompt="x"))
    assert not isinstance(info.value, UnsupportedCapabilityError)  # the row decides, not the key


#: How each OpenAI-compatible row switches reasoning (ProviderSpec.reasoning_switch).
REASONING_SWITCH = {
    "openai": None, "gemini": "reasoning_effort",
    **dict.fromkeys(("lmstudio", "ollama-openai", "hf-openai", "vllm", "llamaserver", "sglang"),
                    "chat_template_kwargs"),
    **dict.fromkeys(("deepseek", "openrouter", "groq", "together", "fireworks", "mistral", "xai",
                     "perplexity", "deepinfra"), None),
}


def test_each_compatible_row_says_how_reasoning_is_switched() -> None:
    compat = {key: spec for key, spec in providers().items()
              if spec.backend.endswith(":OpenAICompatBackend")}
    assert {key: spec.reasoning_switch for key, spec in compat.items()} == REASONING_SWITCH
    assert {key for key, spec in providers().items() if spec.openai_compatible} == set(compat)
    # Only OpenAI names o-series models; the other rows rewrite no model's parameters.
    assert {key: spec.o_series for key, spec in compat.items() if spec.o_series} == {
        "openai": r"o\d"}


def _body(spec: ProviderSpec, model_id: str, **request: Any) -> dict[str, Any]:
    """The chat.completions keyword arguments a backend on ``spec`` sends (offline)."""
    from modelplug import ChatRequest
    from modelplug.spec import ModelRef

    backend = build_backend(ModelRef.ad_hoc(spec, model_id), spec, {"api_key": "test-key"})
    return backend._body(ChatRequest(messages=[{"role": "user", "content": "hi"}], **request))


def _row(key: str, **fields: Any) -> ProviderSpec:
    return ProviderSpec(**{**vars(get_provider(key)), **fields})


@pytest.mark.parametrize("key", ["gemini", "deepseek", "vllm"])
def test_the_reasoning_switch_follows_the_row_not_the_key(key: str) -> None:
    from modelplug import UnsupportedCapabilityError

    effort = _row(key, reasoning_switch="reasoning_effort")
    assert _body(effort, "m", reasoning=False)["reasoning_effort"] == "none"
    assert _body(effort, "m", reasoning=True)["reasoning_effort"] == "medium"
    template = _row(key, reasoning_switch="chat_template_kwargs")
    assert _body(template, "m", reasoning=False)["extra_body"] == {
        "chat_template_kwargs": {"enable_thinking": False}}
    plain = _row(key, reasoning_switch=None)
    assert "extra_body" not in _body(plain, "m", reasoning=False)  # nothing to switch off
    with pytest.raises(UnsupportedCapabilityError, match=r"reasoning=True has no switch on "):
        _body(plain, "m", reasoning=True)
    for spec in (effort, template, plain):  # unset: nothing is sent
        assert _body(spec, "m") == {"model": "m",
                                    "messages": [{"role": "user", "content": "hi"}]}


def test_o_series_rules_follow_the_row_not_the_key() -> None:
    from modelplug import UnsupportedCapabilityError

    rewritten = {"model": "o3-mini", "messages": [{"role": "user", "content": "hi"}],
                 "max_completion_tokens": 300, "temperature": 1}
    kept = {**rewritten, "max_tokens": 300, "temperature": 0.2}
    del kept["max_completion_tokens"]
    for spec in (get_provider("openai"), _row("deepseek", o_series=r"o\d")):
        assert _body(spec, "o3-mini", max_tokens=300, temperature=0.2) == rewritten
        assert _body(spec, "o3-mini", reasoning=True, max_tokens=300, temperature=0.2) == rewritten
        with pytest.raises(UnsupportedCapabilityError, match=(
                rf"^'{spec.key}:o3-mini' is an o-series reasoning model; its reasoning cannot be "
                r"switched off\. Leave reasoning unset, or lower it with ")):
            _body(spec, "o3-mini", reasoning=False)
        assert _body(spec, "gpt-4o", max_tokens=300, temperature=0.2) == {
            **kept, "model": "gpt-4o"}  # matched at the start of the id only
        assert _body(spec, "x-o3", max_tokens=300, temperature=0.2)["max_tokens"] == 300
    assert _body(_row("openai", o_series=None), "o3-mini", max_tokens=300,
                 temperature=0.2) == kept


def test_in_process_providers_reject_timeout_and_max_retries() -> None:
    for name in ("timeout", "max_retries"):
        with pytest.raises(TypeError) as err:
            create_backend("llamacpp:smollm2", **{name: 5})
        assert f"takes no {name!r}" in str(err.value)
        assert "runs in-process" in str(err.value)


def test_ollama_native_rejects_max_retries_and_points_to_ollama_openai() -> None:
    with pytest.raises(ValueError, match="Use the 'ollama-openai' provider"):
        create_backend("ollama:qwen3:8b", max_retries=3)


def test_cache_prompt_is_anthropic_only() -> None:
    with pytest.raises(TypeError, match="'cache_prompt' is an Anthropic-only setting"):
        create_backend("vllm:m", cache_prompt=True)


def test_unknown_kwarg_names_it_and_lists_accepted_ones() -> None:
    with pytest.raises(TypeError) as err:
        create_backend("llamacpp:smollm2", n_cxt=4096)
    message = str(err.value)
    assert "unexpected keyword argument 'n_cxt'" in message
    assert "'n_ctx'" in message and "'model_path'" in message


@pytest.mark.parametrize(("kwargs", "meant"), [({"temprature": 0}, "temperature"),
                                                ({"max_token": 16}, "max_tokens"),
                                                ({"n_ctxx": 10}, "n_ctx")])
def test_a_misspelt_keyword_names_the_one_meant_and_lists_the_standard_parameters(
        kwargs: dict[str, int], meant: str) -> None:
    with pytest.raises(TypeError) as err:
        ChatModelPlug(model="llamacpp:smollm2", **kwargs)
    message = str(err.value)
    assert f"unexpected keyword argument {next(iter(kwargs))!r}. Did you mean {meant!r}?" \
        in message
    assert "Standard parameters: ['temperature', 'max_tokens', 'top_p', 'stop', 'seed', " \
        "'reasoning']" in message
    assert "Settings of 'llamacpp': ['chat_format'," in message
    assert (err.value.setting, err.value.suggestion) == (next(iter(kwargs)), meant)


def _one_typo(draw: st.DrawFn) -> tuple[str, str]:
    """A standard parameter or llamacpp setting with one letter dropped, doubled or swapped."""
    name = draw(st.sampled_from(sorted({*STANDARD_PARAMS, *providers()["llamacpp"].kwargs}
                                       - {"stop", "seed"})))  # 4 letters: too short to guess
    i = draw(st.integers(0, len(name) - 2))
    typo = draw(st.sampled_from([name[:i] + name[i + 1:], name[:i] + name[i] + name[i:],
                                 name[:i] + name[i + 1] + name[i] + name[i + 2:]]))
    return name, typo


@given(st.composite(_one_typo)())
def test_one_typo_in_a_known_name_suggests_that_name(case: tuple[str, str]) -> None:
    name, typo = case
    if typo == name:  # swapping two equal letters
        return
    with pytest.raises(TypeError) as err:
        check_kwargs(providers()["llamacpp"], {typo: 1})
    assert err.value.suggestion == name, str(err.value)


def test_missing_dependency_names_the_extra() -> None:
    spec = ProviderSpec("phantom", "modelplug.backends.llamacpp:LlamaCppBackend", "phantom",
                        "in-process", ("modelplug_no_such_runtime",))
    assert spec.installed is False
    with pytest.raises(MissingDependencyError) as err:
        backend_class(spec)
    assert isinstance(err.value, ImportError)
    assert "pip install 'modelplug[phantom]'" in str(err.value)
    assert "'modelplug_no_such_runtime'" in str(err.value)


HEAVY = ("torch", "transformers", "llama_cpp", "openai", "anthropic", "ollama", "diffusers",
         "google.genai", "typer", "rich", "fastapi", "uvicorn")  # the last four: cli / serve


@pytest.mark.parametrize("module", ["modelplug", "langchain_modelplug",
                                    "llama_index.llms.modelplug",
                                    "llama_index.embeddings.modelplug"])
def test_importing_our_packages_loads_no_sdk_or_runtime(module: str) -> None:
    code = (f"import sys, {module}; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_construction_loads_no_runtime() -> None:
    code = ("import sys; from langchain_modelplug import ChatModelPlug; "
            "ChatModelPlug(model='llamacpp:smollm2'); ChatModelPlug(model='vllm:m'); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
