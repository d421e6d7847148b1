"""Typed errors. Each subclasses the builtin a caller would naturally catch (ValueError,
ImportError, ...) so code written against plain Python exceptions keeps working."""

from __future__ import annotations


class ModelPlugError(Exception):
    """Base of every error modelplug raises itself."""

    #: Whether trying again (or another provider) may succeed; drives fallback defaults.
    retryable: bool = False


class ConfigurationError(ModelPlugError, ValueError):
    """A model string, setting or request that cannot work as given."""


class UnknownProviderError(ConfigurationError):
    """The provider key of a model string is not registered."""


class UnknownModelError(ConfigurationError):
    """A closed-catalog provider does not know the model id, or a bare name matches nothing."""


class AmbiguousModelError(ConfigurationError):
    """A bare model name matches several providers and none is available locally."""


class UnsupportedCapabilityError(ConfigurationError):
    """The request needs something the model or backend cannot do (tools, images, a schema)."""


class MissingDependencyError(ModelPlugError, ImportError):
    """An optional SDK or runtime is not installed; the message names the pip extra."""


class ModelNotFoundError(ConfigurationError, FileNotFoundError):
    """Weights for an in-process model cannot be located locally."""
