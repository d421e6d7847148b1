"""Provider rows: which backend serves a provider key, what it needs installed, what it accepts.

Rows hold the backend as a ``"module:Class"`` string, so listing providers and building error
messages imports nothing. A provider that is pure configuration (an OpenAI-compatible endpoint)
is one row; only a provider with behaviour of its own has a backend module. Third-party packages
add rows through the ``modelplug.providers`` entry-point group (each entry point names a
:class:`ProviderSpec`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Literal

from modelplug.errors import SettingError, UnknownProviderError, closest_name

Kind = Literal["cloud", "local-server", "in-process"]
PrefillMode = Literal["native", "continue_final_message"]
ReasoningSwitch = Literal["chat_template_kwargs", "reasoning_effort"]

#: Per-request parameters every model takes (fields of :class:`~modelplug.types.ChatRequest`,
#: and of every adapter), listed when a setting is not recognised.
STANDARD_PARAMS = ("temperature", "max_tokens", "top_p", "stop", "seed", "reasoning")
# Settings every networked backend understands; forwarded to the SDK client as-is.
NETWORK_KWARGS = frozenset({"api_key", "base_url", "timeout", "max_retries", "default_headers",
                            "model_kwargs"})
LLAMACPP_KWARGS = frozenset({"model_path", "n_ctx", "n_gpu_layers", "n_threads", "n_batch",
                             "chat_format", "chat_handler", "verbose", "model_kwargs",
                             "n_parallel", "max_queue", "queue_timeout", "chat_template",
                             "thinking_budget"})
HF_KWARGS = frozenset({"model_kwargs", "device", "torch_dtype", "allow_download",
                       "trust_remote_code", "tool_call_format", "max_batch", "kv_cache_tokens",
                       "max_queue", "queue_timeout", "continuous_batching", "progress",
                       "chat_template", "thinking_budget"})

#: The backend of every OpenAI-compatible row (see :func:`_compat`).
OPENAI_COMPAT_BACKEND = "modelplug.backends.openai_compat:OpenAICompatBackend"

#: Why an in-process row refuses the network settings (the row's ``refused`` field).
IN_PROCESS_REFUSED = {
    name: (f"runs in-process with no HTTP request, so it takes no {name!r} (a setting of "
           "networked providers only).")
    for name in ("timeout", "max_retries")}
#: Settings only one provider takes, and why any other refuses them.
SINGLE_PROVIDER_SETTINGS = {
    "cache_prompt": ("'cache_prompt' is an Anthropic-only setting; provider {key!r} does not "
                     "take it. Remove it, or use an 'anthropic:' model."),
}


@dataclass(frozen=True)
class ProviderSpec:
    key: str
    backend: str
    extra: str
    kind: Kind
    #: Import names that must be importable (checked without importing them).
    requires: tuple[str, ...]
    api_key_env: str | None = None
    base_url: str | None = None
    #: Provider-specific constructor kwargs, beyond the standard sampling params.
    kwargs: frozenset[str] = NETWORK_KWARGS
    #: A closed catalog: ids not in the catalog are rejected unless ``;flags`` declare them.
    closed_catalog: bool = False
    description: str = ""
    #: Whether its chat models answer with a JSON schema (``response_format``) honoured; None:
    #: unknown (the server decides). The catalog's refs and the backends' profiles read it.
    structured_output: bool | None = None
    #: In-process decoding under a grammar: every chat model can call tools and follow a JSON
    #: schema, whatever its own training (see :mod:`modelplug.backends.tooling`).
    constrained_decoding: bool = False
    #: Settings other rows take that this one refuses, each with why and what to do instead
    #: (the error says "Provider '<key>' <reason>").
    refused: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    #: How a chat answer continues a conversation that ends in an assistant message with text
    #: (a prefill: the answer goes on from that text; a fallback set resumes a cut stream so):
    #: ``"native"`` (the provider reads a final assistant message so: Anthropic, llama-server,
    #: the in-process backends), ``"continue_final_message"`` (vLLM, SGLang: the request says
    #: ``continue_final_message: true, add_generation_prompt: false``), or None (unknown, or
    #: the provider answers it as a finished turn: it cannot continue a cut stream).
    prefill: PrefillMode | None = None
    #: Whether the answer to a prefill may start by repeating it (llama-server: its chat parser
    #: reads the prefill and the output as one message); the backend strips the repeat.
    prefill_echo: bool = False
    #: OpenAI-compatible rows: whether the server reads a ``tool_choice`` naming one tool (an
    #: object). False (llama-server, which takes the object as the wrong type and falls back to
    #: "auto" with only a log line): a named choice is sent as "required" over just that tool.
    named_tool_choice: bool = True
    #: OpenAI-compatible rows: whether the server says at ``GET /props`` (beside ``/v1``) what
    #: the loaded model and its chat template can do (llama-server), asked once before the first
    #: request; elsewhere the catalog and ``;flags`` decide.
    props_probe: bool = False
    #: OpenAI-compatible rows: whether the endpoint has raw text completion (``/v1/completions``).
    has_completions: bool = True
    #: OpenAI-compatible rows: how ``reasoning=True/False`` reaches the model.
    #: ``"chat_template_kwargs"`` (local servers: vLLM, SGLang, llama-server, transformers serve
    #: pass ``chat_template_kwargs={"enable_thinking": ...}`` to the chat template, which Qwen3,
    #: DeepSeek-R1 distills and other hybrid-thinking templates read), ``"reasoning_effort"``
    #: (Gemini: ``reasoning_effort`` "medium" or "none"), or None: no switch, so reasoning=True
    #: is refused before any request and reasoning=False sends nothing.
    reasoning_switch: ReasoningSwitch | None = None
    #: OpenAI-compatible rows: the ids of o-series reasoning models (a regular expression matched
    #: at the start of the id; OpenAI: o1, o3-mini, o4-mini, ...). They take
    #: ``max_completion_tokens`` instead of ``max_tokens`` and only the default temperature (1),
    #: which the backend sends in their place, and their reasoning cannot be switched off.
    o_series: str | None = None

    @property
    def in_process(self) -> bool:
        return self.kind == "in-process"

    @property
    def openai_compatible(self) -> bool:
        """Whether the endpoint speaks OpenAI's API (``/v1/chat/completions``, ``/v1/models``)
        and the OpenAI-compatible backend serves it."""
        return self.backend == OPENAI_COMPAT_BACKEND

    @property
    def missing(self) -> list[str]:
        """The packages this row's backend needs that are not installed."""
        return [name for name in self.requires if not _importable(name)]

    @property
    def installed(self) -> bool:
        return not self.missing

    @property
    def pip_hint(self) -> str:
        return f"pip install 'modelplug[{self.extra}]'"


def _importable(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (a dotted name's missing parent
    counts as missing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _compat(key: str, base_url: str, api_key_env: str | None, description: str,
            kind: Kind = "local-server", closed_catalog: bool = False,
            structured_output: bool | None = None,
            prefill: PrefillMode | None = None, prefill_echo: bool = False,
            **quirks: Any) -> ProviderSpec:
    """One OpenAI-compatible endpoint: pure configuration over the openai SDK (``quirks``: the
    row's other fields, e.g. ``named_tool_choice=False``). A local server switches reasoning
    through the chat template unless the row says otherwise."""
    quirks.setdefault("reasoning_switch",
                      "chat_template_kwargs" if kind == "local-server" else None)
    return ProviderSpec(
        key=key,
        backend=OPENAI_COMPAT_BACKEND,
        extra="openai",
        kind=kind,
        requires=("openai",),
        api_key_env=api_key_env,
        base_url=base_url,
        closed_catalog=closed_catalog,
        description=description,
        structured_output=structured_output,
        prefill=prefill,
        prefill_echo=prefill_echo,
        **quirks,
    )


_BUILTIN: tuple[ProviderSpec, ...] = (
    ProviderSpec("ollama", "modelplug.backends.ollama:OllamaBackend", "ollama", "local-server",
                 ("ollama",), base_url="http://localhost:11434",
                 kwargs=frozenset({"base_url", "timeout", "model_keep_alive_seconds",
                                   "default_headers", "model_kwargs"}),
                 description="Ollama's native API (ollama SDK)", structured_output=True,
                 refused={"max_retries": (
                     "(native API) has no request retry, so it takes no 'max_retries'. Use the "
                     "'ollama-openai' provider, which goes through the OpenAI SDK and supports "
                     "max_retries.")}),
    ProviderSpec("hf", "modelplug.backends.hf:HFBackend", "hf", "in-process",
                 ("torch", "transformers"), kwargs=HF_KWARGS,
                 description="transformers, in-process", refused=IN_PROCESS_REFUSED,
                 structured_output=True, constrained_decoding=True, prefill="native"),
    ProviderSpec("llamacpp", "modelplug.backends.llamacpp:LlamaCppBackend", "llamacpp",
                 "in-process", ("llama_cpp",), kwargs=LLAMACPP_KWARGS,
                 description="llama.cpp (llama-cpp-python), in-process GGUF",
                 refused=IN_PROCESS_REFUSED, structured_output=True, constrained_decoding=True,
                 prefill="native"),
    ProviderSpec("anthropic", "modelplug.backends.anthropic:AnthropicBackend", "anthropic", "cloud",
                 ("anthropic",), api_key_env="ANTHROPIC_API_KEY",
                 base_url="https://api.anthropic.com",
                 kwargs=NETWORK_KWARGS | {"cache_prompt", "thinking_budget"}, closed_catalog=True,
                 description="Anthropic Messages API (anthropic SDK)", structured_output=True,
                 prefill="native"),
    _compat("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "OpenAI (openai SDK)",
            kind="cloud", closed_catalog=True, structured_output=True, o_series=r"o\d"),
    _compat("gemini", "https://generativelanguage.googleapis.com/v1beta/openai/", "GOOGLE_API_KEY",
            "Google Gemini through its OpenAI-compatible endpoint", kind="cloud",
            closed_catalog=True, structured_output=True, has_completions=False,
            reasoning_switch="reasoning_effort"),
    _compat("lmstudio", "http://localhost:1234/v1", None, "LM Studio server"),
    _compat("ollama-openai", "http://localhost:11434/v1", None,
            "Ollama through its OpenAI-compatible API (supports max_retries)"),
    _compat("hf-openai", "http://localhost:8000/v1", None, "Hugging Face transformers serve"),
    _compat("vllm", "http://localhost:8000/v1", None, "vLLM server", structured_output=True,
            prefill="continue_final_message"),
    _compat("llamaserver", "http://localhost:8080/v1", None, "llama.cpp llama-server",
            prefill="native", prefill_echo=True, named_tool_choice=False, props_probe=True),
    _compat("sglang", "http://localhost:30000/v1", None, "SGLang server",
            prefill="continue_final_message"),
    # OpenAI-compatible clouds: configuration only, free-form model ids.
    _compat("deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", "DeepSeek", "cloud"),
    _compat("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "OpenRouter",
            "cloud"),
    _compat("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", "Groq", "cloud"),
    _compat("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY", "Together AI", "cloud"),
    _compat("fireworks", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY",
            "Fireworks AI", "cloud"),
    _compat("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY", "Mistral AI", "cloud"),
    _compat("xai", "https://api.x.ai/v1", "XAI_API_KEY", "xAI", "cloud"),
    _compat("perplexity", "https://api.perplexity.ai", "PERPLEXITY_API_KEY", "Perplexity", "cloud"),
    _compat("deepinfra", "https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY", "DeepInfra",
            "cloud"),
)


# Image and audio providers: their own namespaces (``hf:`` is a diffusers pipeline here), served
# by create_image_backend / create_audio_backend in modelplug.media.
HF_MEDIA_KWARGS = frozenset({"model_kwargs", "torch_dtype", "allow_download", "progress"})
_MEDIA: dict[str, tuple[ProviderSpec, ...]] = {
    "image": (
        ProviderSpec("hf", "modelplug.backends.diffusion:HFImageBackend", "diffusers",
                     "in-process", ("torch", "diffusers"), kwargs=HF_MEDIA_KWARGS,
                     description="diffusers pipelines, in-process", refused=IN_PROCESS_REFUSED),
        ProviderSpec("gemini", "modelplug.backends.gemini_image:GeminiImageBackend", "google",
                     "cloud", ("google.genai",), api_key_env="GOOGLE_API_KEY",
                     base_url="https://generativelanguage.googleapis.com",
                     description="Gemini image generation (google-genai SDK)"),
    ),
    "audio": (
        ProviderSpec("hf", "modelplug.backends.diffusion:HFAudioBackend", "diffusers",
                     "in-process", ("torch", "transformers"), kwargs=HF_MEDIA_KWARGS,
                     description="transformers text-to-audio or diffusers audio pipelines",
                     refused=IN_PROCESS_REFUSED),
    ),
}


def media_providers(modality: str) -> tuple[ProviderSpec, ...]:
    """The image (``"image"``) or audio (``"audio"``) provider rows."""
    return _MEDIA[modality]


def media_provider(modality: str, key: str) -> ProviderSpec:
    """The image or audio provider row for ``key``; unknown keys list the valid ones."""
    rows = {spec.key: spec for spec in _MEDIA[modality]}
    if key not in rows:
        raise UnknownProviderError(
            f"Unknown {modality} provider {key!r}. {modality.capitalize()} providers: "
            f"{sorted(rows)} (e.g. '{next(iter(rows))}:<model id>')."
        )
    return rows[key]


@cache
def providers() -> dict[str, ProviderSpec]:
    """Every provider row: built-ins, then entry-point plugins (which may not shadow them)."""
    rows = {spec.key: spec for spec in _BUILTIN}
    for ep in entry_points(group="modelplug.providers"):
        spec = ep.load()
        if isinstance(spec, ProviderSpec) and spec.key not in rows:
            rows[spec.key] = spec
    return rows


def installed_providers() -> list[str]:
    """Keys of providers whose dependencies are importable, in registry order."""
    return [key for key, spec in providers().items() if spec.installed]


def get_provider(key: str) -> ProviderSpec:
    try:
        return providers()[key]
    except KeyError:
        missing = [f"{s.key} ({s.pip_hint})" for s in providers().values() if not s.installed]
        hint = f" Providers that need an extra: {', '.join(missing)}." if missing else ""
        raise UnknownProviderError(
            f"Unknown provider {key!r}. Available providers (with installed deps): "
            f"{installed_providers()}.{hint}"
        ) from None


def check_kwargs(spec: ProviderSpec, kwargs: dict[str, Any],
                 standard: tuple[str, ...] = STANDARD_PARAMS) -> None:
    """Reject settings the provider does not take, before anything is built or sent
    (:class:`~modelplug.errors.SettingError`, both a TypeError and a ValueError). ``standard``:
    the per-request parameters of this kind of model, suggested and listed beside the row's."""
    for name in kwargs:
        if name in spec.kwargs:
            continue
        if name in spec.refused:
            raise SettingError(f"Provider {spec.key!r} {spec.refused[name]}", setting=name)
        if name in SINGLE_PROVIDER_SETTINGS:
            raise SettingError(SINGLE_PROVIDER_SETTINGS[name].format(key=spec.key), setting=name)
        suggestion = closest_name(name, {*standard, *spec.kwargs})
        raise SettingError(
            f"Provider {spec.key!r} got an unexpected keyword argument {name!r}."
            + (f" Did you mean {suggestion!r}?" if suggestion else "")
            + (f" Standard parameters: {list(standard)}." if standard else "")
            + f" Settings of {spec.key!r}: {sorted(spec.kwargs)}.", setting=name,
            suggestion=suggestion
        )
