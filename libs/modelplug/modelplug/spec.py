"""Model references: ``"provider:model_id[;flags]"`` strings, catalog members and bare names.

Only the first ``:`` separates the provider, so ``ollama:qwen3.5:9b`` keeps its tag. Flags after
``;`` declare what an ad-hoc model can do (``vllm:my-model;tools,vision``) and are also the escape
hatch for an id a closed catalog does not know yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from modelplug import catalog
from modelplug.catalog import CatalogModel, ModelInfo
from modelplug.errors import AmbiguousModelError, ConfigurationError, UnknownModelError
from modelplug.registry import ProviderSpec, get_provider

logger = logging.getLogger("modelplug")

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

    def __str__(self) -> str:
        return f"{self.provider}:{self.model_id}"

    @property
    def spec(self) -> ProviderSpec:
        return get_provider(self.provider)

    @classmethod
    def from_info(cls, info: ModelInfo) -> ModelRef:
        return cls(info.provider, info.id, tools=info.tools, thinking=info.thinking,
                   vision=info.vision, context_window=info.context_window,
                   max_output=info.max_output, info=info)


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
        ref = ModelRef(provider, model_id)
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


def resolve_model(model: ModelLike) -> ModelRef:
    """Normalise a model string, catalog enum member or bare catalog name to a :class:`ModelRef`.

    A bare name (``"QWEN_3_8B"``, or a catalog id such as ``"claude-sonnet-4-6"``) that several
    providers ship is settled by local availability: running Ollama, then cached Hugging Face
    weights, then a reachable local server, then a locally present GGUF, tool-capable first. The
    choice is logged at WARNING. If none is available locally, ValueError lists the options.
    """
    if isinstance(model, ModelRef):
        return model
    if isinstance(model, CatalogModel):
        return ModelRef.from_info(model.info)
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError(
            f"Expected a model string like 'provider:model_id', a catalog member or a catalog "
            f"name; got {model!r}."
        )
    model = model.strip()
    if ":" in model:
        return parse_model_string(model)
    return _resolve_bare_name(model)


def _resolve_bare_name(name: str) -> ModelRef:
    matches = [m.info for m in catalog.all_models()
               if m.name == name.upper() or name in (m.info.id, *m.info.aliases)]
    if not matches:
        raise UnknownModelError(
            f"No catalog model is named {name!r}. Use 'provider:model_id' "
            f"(providers: {sorted(get_provider_keys())}) or a catalog name such as "
            f"'CLAUDE_SONNET_4_6'."
        )
    if len(matches) == 1:
        return ModelRef.from_info(matches[0])
    from modelplug.local import first_available  # local probes only for real ties

    chosen = first_available(matches)
    if chosen is None:
        options = [info.key for info in matches]
        raise AmbiguousModelError(
            f"Model name {name!r} is ambiguous and none of its providers has it available "
            f"locally. Pin one with its 'provider:model_id' string: {options}."
        )
    logger.warning("Resolved ambiguous model name %r to %r (available locally).", name, chosen.key)
    return ModelRef.from_info(chosen)


def get_provider_keys() -> list[str]:
    from modelplug.registry import providers

    return list(providers())
