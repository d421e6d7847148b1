"""Backends, one module per backend family. Modules load on first use of their provider."""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any

from modelplug.backends.base import Backend
from modelplug.catalog import CatalogModel
from modelplug.errors import (
    MissingDependencyError,
    ModelPlugError,
    SettingError,
    amend_message,
    from_env_variable,
)
from modelplug.local import DEFAULT_MODEL_ENV, default_model, resolve_model
from modelplug.registry import ProviderSpec, check_kwargs
from modelplug.spec import ModelLike

#: An example value for a setting an error asks for, as a fix hint shows it.
SETTING_EXAMPLES = {"model_path": "'/models/model.gguf'"}


def backend_class(spec: ProviderSpec) -> type[Any]:
    """Import the class a provider row names (``"module:Class"``); a missing SDK is a
    MissingDependencyError naming the extra to install."""
    if spec.missing:
        raise MissingDependencyError(
            f"Provider '{spec.key}' needs the {', '.join(repr(m) for m in spec.missing)} "
            f"package, which is not installed. Install it with: {spec.pip_hint}",
            name=spec.missing[0],
        )
    module_name, _, class_name = spec.backend.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_backend(ref: Any, spec: ProviderSpec, settings: dict[str, Any]) -> Any:
    """The backend (chat, image or audio) ``spec`` names for ``ref``, with settings as given."""
    return backend_class(spec)(ref, spec, settings)


def create_backend(model: ModelLike | None = None, **settings: Any) -> Backend:
    """The backend for ``model`` (the local default when None), with provider settings checked.

    Settings set to None count as not given. Construction is cheap: SDK clients are created
    and weights are loaded on first use.
    """
    named = os.environ.get(DEFAULT_MODEL_ENV) if model is None else None
    with from_env_variable(DEFAULT_MODEL_ENV, named) if named else contextlib.nullcontext():
        ref = default_model() if model is None else resolve_model(model)
        settings = {k: v for k, v in settings.items() if v is not None}
        spec = ref.spec
        check_kwargs(spec, settings)
        return build_backend(ref, spec, settings)


def adapter_backend(adapter: Any) -> Backend:
    """The backend a framework adapter's fields describe (``model``, the client settings and
    ``provider_kwargs``), built once in the adapter's ``__init__`` (not in a validator, so typed
    errors such as UnknownModelError reach the caller as themselves). With no model named,
    ``adapter.model`` becomes the local default that was picked. An error about a setting to
    pass gets the fix as the adapter's own keyword arguments
    (``ModelPlugEmbeddings(model='llamacpp:x', model_path=...)``)."""
    try:
        backend = create_backend(
            adapter.model, timeout=adapter.timeout, max_retries=adapter.max_retries,
            api_key=adapter.api_key, base_url=adapter.base_url, **adapter.provider_kwargs)
    except ModelPlugError as exc:
        if exc.setting and not isinstance(exc, SettingError):
            model = f"model={adapter.model!r}, " if adapter.model else ""
            example = SETTING_EXAMPLES.get(exc.setting, "...")
            amend_message(exc, after=f" For example: {type(adapter).__name__}("
                                     f"{model}{exc.setting}={example}).")
        raise
    if adapter.model is None:
        adapter.model = str(backend.ref)
    return backend


def collect_provider_kwargs(model_cls: type, values: Any) -> Any:
    """For the adapters' pydantic models: keyword arguments that are not fields (nor aliases)
    move into ``values["provider_kwargs"]``, to be checked against the provider's row; a catalog
    enum member as ``model`` becomes its ``"provider:model_id"`` string (``LlamaCppModel.SMOLLM2``
    -> ``"llamacpp:smollm2"``), so the field stays text and serializes as such."""
    if not isinstance(values, dict):
        return values
    if isinstance(values.get("model"), CatalogModel):
        values = {**values, "model": values["model"].info.key}
    fields = model_cls.model_fields  # type: ignore[attr-defined]
    names = set(fields) | {f.alias for f in fields.values() if f.alias}
    extra = {k: v for k, v in values.items() if k not in names}
    if not extra:
        return values
    kept = {k: v for k, v in values.items() if k not in extra}
    return {**kept, "provider_kwargs": {**values.get("provider_kwargs", {}), **extra}}


__all__ = ["Backend", "adapter_backend", "collect_provider_kwargs", "create_backend"]
