"""The fields LangChain's modelplug classes share, and the backend built from them.

:class:`BackendFields` (the model, the client settings, the provider's own settings and the
backend they describe) is shared by ``ChatModelPlug``, ``ModelPlugLLM`` and
``ModelPlugEmbeddings``; :class:`GenerationFields` adds the sampling settings the two text
generators share, as langchain-openai's ``BaseChatOpenAI`` is shared by its subclasses.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import LangSmithParams
from pydantic import BaseModel, Field, PrivateAttr, SecretStr, model_validator

from modelplug.backends import Backend, adapter_backend, collect_provider_kwargs


class BackendFields(BaseModel):
    """A modelplug backend's settings as pydantic fields; the backend is built once, in
    ``__init__``, from them."""

    model: str | None = None
    """``"provider:model_id"``, a catalog member (stored as its ``"provider:model_id"``), a
    catalog name, or None for the first model available locally."""
    timeout: float | None = None
    """Seconds per request, forwarded to the provider's SDK (networked providers only)."""
    max_retries: int | None = None
    """The provider SDK's own retries (networked providers only)."""
    api_key: SecretStr | None = None
    """Defaults to the provider's documented environment variable."""
    base_url: str | None = None
    """The server to call, for providers reached over HTTP."""
    provider_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Provider-specific settings (any keyword argument that is not a field of the class),
    checked against the provider's row."""

    _backend: Backend = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _collect_provider_kwargs(cls, values: Any) -> Any:
        return collect_provider_kwargs(cls, values)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._backend = adapter_backend(self)

    def model_post_init(self, context: Any, /) -> None:
        # Pydantic gives a class with private attributes a model_post_init of its own, which
        # would hide the framework class's next in line (LangChain's language models seed
        # metadata["lc_versions"] there): pass on to it.
        super().model_post_init(context)

    @property
    def backend(self) -> Backend:
        """The modelplug backend this model calls (shared weights for in-process models)."""
        return self._backend


class GenerationFields(BackendFields):
    """:class:`BackendFields` plus the sampling settings of a model that generates text."""

    temperature: float | None = None
    """Sampling temperature."""
    max_tokens: int | None = None
    """The most tokens to generate."""
    top_p: float | None = None
    """Nucleus sampling: the probability mass to sample from."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Sequences that end the generation."""
    seed: int | None = None
    """Sampling seed, where the provider takes one."""
    streaming: bool = False
    """Whether ``invoke`` streams from the provider and returns the whole answer."""

    def _sampling_ls_params(self, params: LangSmithParams, stop: list[str] | None,
                            kwargs: dict[str, Any]) -> LangSmithParams:
        """``params`` with the call's temperature, max_tokens and stop, as LangSmith names
        them (a call's own value over the model's)."""
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params
