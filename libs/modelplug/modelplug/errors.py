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


class FallbackExhaustedError(ModelPlugError):
    """Every candidate of a fallback set failed or was skipped.

    ``errors`` holds ``(candidate name, exception)`` for every candidate, in the order they were
    tried; a candidate skipped for lacking a capability appears with an
    :class:`UnsupportedCapabilityError`. The last error is chained as ``__cause__``.
    """

    def __init__(self, errors: list[tuple[str, BaseException]]) -> None:
        self.errors = list(errors)
        lines = [f"  {name}: {type(exc).__name__}: {exc}" for name, exc in self.errors]
        super().__init__(
            f"All {len(self.errors)} candidate model(s) failed or were skipped:\n"
            + "\n".join(lines)
            + "\nCheck that at least one candidate is reachable and can serve this request, "
            "or add another candidate."
        )

    @property
    def exceptions(self) -> list[BaseException]:
        """The errors alone, in the order the candidates were tried."""
        return [exc for _, exc in self.errors]

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        """True when every candidate failed for a transient reason (an outer fallback moves on)."""
        from modelplug.fallback import is_retryable

        return bool(self.errors) and all(is_retryable(exc) for exc in self.exceptions)
