"""The fields LlamaIndex's modelplug classes share, and the backend built from them.

:class:`BackendFields` (the model, the client settings, the provider's own settings and the
backend they describe) is shared by ``ModelPlug`` and by ``ModelPlugEmbedding`` of
``llama-index-embeddings-modelplug``, which depends on this package for it (as
llama-index-embeddings-azure-openai does on llama-index-llms-azure-openai).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    model_validator,
)

from modelplug.backends import Backend, adapter_backend, collect_provider_kwargs


class BackendFields(BaseModel):
    """A modelplug backend's settings as pydantic fields; the backend is built once, in
    ``__init__``, from them."""

    model: str | None = Field(default=None, description="'provider:model_id' or a catalog name.")
    timeout: float | None = Field(
        default=None,
        description="Seconds per request, forwarded to the provider's SDK (networked providers "
                    "only).")
    max_retries: int | None = Field(
        default=None, description="The provider SDK's own retries (networked providers only).")
    #: Never serialized (to_dict/to_json leave it out): a loaded copy takes the key from the
    #: provider's environment variable, as LangChain's secrets do.
    api_key: SecretStr | None = Field(
        default=None, exclude=True,
        description="Defaults to the provider's documented environment variable.")
    base_url: str | None = Field(
        default=None, description="The server to call, for providers reached over HTTP.")
    provider_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Provider-specific settings (any other keyword).")

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
        # would hide the framework class's next in line: pass on to it.
        super().model_post_init(context)

    @property
    def backend(self) -> Backend:
        """The modelplug backend this model calls (shared weights for in-process models)."""
        return self._backend
