"""Model references: ``"provider:model_id[;flags]"`` strings, catalog members and bare names.

Parsing only: nothing here probes the machine (a bare name that several providers ship is
settled by :func:`modelplug.local.resolve_model`, where local availability is known). Only the
first ``:`` separates the provider, so ``ollama:qwen3.5:9b`` keeps its tag. Flags after ``;``
declare what an ad-hoc model can do (``vllm:my-model;tools,vision``) and are also the escape
hatch for an id a closed catalog does not know yet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from modelplug import catalog
from modelplug.catalog import CatalogModel, ModelInfo
from modelplug.errors import ConfigurationError, UnknownModelError
from modelplug.registry import ProviderSpec, get_provider, providers

FLAGS = ("tools", "thinking", "vision")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: which provider, which id, and what it is known to support.

    Capability fields are ``None`` when nothing is known (a free-form id on a local server):
    then nothing is refused up front and the server has the last word.
    """

    provider: str
    model_id: str
    tools: bool | None = None
    thinking: bool | None = None
    vision: bool | None = None
    context_window: int | None = None
    max_output: int | None = None
    info: ModelInfo | None = None
    structured_output: bool | None = None

    def __str__(self) -> str:
        return f"{self.provider}:{self.model_id}"

    @property
    def spec(self) -> ProviderSpec:
        return get_provider(self.provider)

    @classmethod
    def from_info(cls, info: ModelInfo) -> ModelRef:
        """A catalog model, with what its provider adds: a grammar (in-process) gives every
        chat model tools and structured output; the row says whether structured output is
        honoured. :meth:`Backend.profile` starts from the same values, so the catalog, this ref
        and the profile agree."""
        spec = get_provider(info.provider)
        chat = info.kind == "chat"
        return cls(info.provider, info.id,
                   tools=info.tools or (chat and spec.constrained_decoding),
                   thinking=info.thinking, vision=info.vision,
                   context_window=info.context_window, max_output=info.max_output, info=info,
                   structured_output=spec.structured_output if chat else False)

    @classmethod
    def ad_hoc(cls, spec: ProviderSpec, model_id: str) -> ModelRef:
        """A model the catalog does not list: what its provider row says, the rest unknown."""
        return cls(spec.key, model_id, tools=True if spec.constrained_decoding else None,
                   structured_output=spec.structured_output)


ModelLike = str | CatalogModel | ModelRef


def parse_model_string(text: str) -> ModelRef:
    """Parse ``"provider:model_id[;flags]"`` without consulting local availability."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigurationError(
            f"Model string {text!r} is not of the form 'provider:model_id' "
            "(e.g. 'anthropic:claude-sonnet-4-6', 'ollama:qwen3.5:9b', 'llamacpp:smollm2')."
        )
    body, _, flag_text = text.partition(";")
    provider, _, model_id = body.partition(":")
    provider, model_id = provider.strip().lower(), model_id.strip()
    spec = get_provider(provider)
    if not model_id:
        raise ConfigurationError(
            f"Model string {text!r} has an empty model id. Write it as '{provider}:<model_id>'."
        )
    flags = _parse_flags(text, flag_text) if flag_text else None
    info = catalog.find(provider, model_id)
    if info is not None:
        ref = ModelRef.from_info(info)
    elif spec.closed_catalog and flags is None:
        known = sorted(m.id for m in catalog.models_for(provider))
        raise UnknownModelError(
            f"Provider {provider!r} has no model id {model_id!r}. Available: {known}. "
            f"For a model the catalog does not list yet, declare it: "
            f"'{provider}:{model_id};tools' (flags: {', '.join(FLAGS)})."
        )
    else:
        ref = ModelRef.ad_hoc(spec, model_id)
    if flags is not None:
        ref = replace(ref, **{flag: flag in flags for flag in FLAGS})
    return ref


def _parse_flags(text: str, flag_text: str) -> frozenset[str]:
    flags = frozenset(f.strip().lower() for f in flag_text.split(",") if f.strip())
    unknown = sorted(flags - set(FLAGS))
    if unknown:
        raise ConfigurationError(
            f"Unknown capability flag(s) {unknown} in {text!r}. Valid flags: {list(FLAGS)}."
        )
    return flags


def catalog_matches(name: str) -> list[ModelInfo]:
    """Every catalog model a bare name (``"QWEN_3_8B"``, ``"claude-sonnet-4-6"``, an alias) can
    mean; UnknownModelError when none. Several matches are settled by local availability, which
    :func:`modelplug.local.resolve_model` knows."""
    matches = [m.info for m in catalog.all_models()
               if m.name == name.upper() or name in (m.info.id, *m.info.aliases)]
    if not matches:
        raise UnknownModelError(
            f"No catalog model is named {name!r}. Use 'provider:model_id' "
            f"(providers: {sorted(get_provider_keys())}) or a catalog name such as "
            f"'CLAUDE_SONNET_4_6'."
        )
    return matches


def get_provider_keys() -> list[str]:
    return list(providers())
