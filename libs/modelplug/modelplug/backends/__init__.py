"""Backends, one module per backend family. Modules load on first use of their provider."""

from __future__ import annotations

from typing import Any

from modelplug.backends.base import Backend
from modelplug.registry import check_kwargs
from modelplug.spec import ModelLike, resolve_model


def create_backend(model: ModelLike | None = None, **settings: Any) -> Backend:
    """The backend for ``model`` (the local default when None), with provider settings checked.

    Settings set to None count as not given. Construction is cheap: SDK clients are created
    and weights are loaded on first use.
    """
    from modelplug.local import default_model

    ref = default_model() if model is None else resolve_model(model)
    settings = {k: v for k, v in settings.items() if v is not None}
    spec = ref.spec
    check_kwargs(spec, settings)
    return spec.create_backend(ref, settings)


__all__ = ["Backend", "create_backend"]
