"""What a call cost: normalised :class:`~modelplug.types.Usage` priced from a maintained table.

Cloud prices come from `genai-prices <https://github.com/pydantic/genai-prices>`_ (the
``modelplug[cost]`` extra, imported on the first priced call): it prices cache reads, cache
writes and reasoning tokens the way each provider bills them and is updated as prices change.
Models on the user's own hardware (in-process and local-server providers) cost 0 unless a price
is set with :func:`set_price`. A model no table knows costs "unknown" (``total`` None and a
``reason``), never a guessed number.

``Usage.input_tokens`` is the whole input, cache reads and writes included, and
``Usage.output_tokens`` includes reasoning tokens (audio tokens are likewise part of both):
the same convention genai-prices expects, which prices audio tokens at the model's audio rates
where it lists them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from modelplug.types import Usage

__all__ = ["Cost", "ModelTotals", "Price", "UsageTotals", "cost_of", "set_price"]

_MTOK = Decimal(1_000_000)

#: modelplug provider keys whose genai-prices provider id differs.
_PRICE_PROVIDER = {"gemini": "google", "google": "google", "xai": "x-ai"}


@dataclass(frozen=True)
class Price:
    """A price per million tokens, in USD; cache prices default to the input price."""

    input_per_mtok: Decimal | float | str
    output_per_mtok: Decimal | float | str
    cache_read_per_mtok: Decimal | float | str | None = None
    cache_write_per_mtok: Decimal | float | str | None = None

    def cost(self, usage: Usage) -> tuple[Decimal, Decimal]:
        """(input cost, output cost) of ``usage``."""
        def d(value: Any, default: Any) -> Decimal:
            return Decimal(str(default if value is None else value))
        plain = usage.input_tokens - usage.cache_read_tokens - usage.cache_creation_tokens
        inp = (plain * d(self.input_per_mtok, 0)
               + usage.cache_read_tokens * d(self.cache_read_per_mtok, self.input_per_mtok)
               + usage.cache_creation_tokens * d(self.cache_write_per_mtok, self.input_per_mtok))
        return inp / _MTOK, usage.output_tokens * d(self.output_per_mtok, 0) / _MTOK


@dataclass(frozen=True)
class Cost:
    """The cost of one call. ``total`` None means unknown, and ``reason`` says why."""

    total: Decimal | None
    input: Decimal | None = None
    output: Decimal | None = None
    currency: str = "USD"
    #: Where the price came from: "genai-prices <version>", "local" or "set_price".
    source: str = ""
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (floats), as put in ``response_metadata['cost']``."""
        def f(value: Decimal | None) -> float | None:
            return None if value is None else float(value)
        out: dict[str, Any] = {"total": f(self.total), "input": f(self.input),
                               "output": f(self.output), "currency": self.currency,
                               "source": self.source}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


_prices: dict[str, Price] = {}


def set_price(model: str, price: Price | None) -> None:
    """Price ``"provider:model_id"`` yourself (a local model's power bill, a negotiated rate);
    it overrides the table. None removes it."""
    provider, sep, model_id = model.partition(":")
    if not sep or not provider or not model_id:
        raise ValueError(f"set_price needs a 'provider:model_id' string, got {model!r}")
    if price is None:
        _prices.pop(model, None)
    else:
        _prices[model] = price


def _is_local(provider: str) -> bool:
    from modelplug.registry import providers
    spec = providers().get(provider)
    return spec is not None and spec.kind != "cloud"


def cost_of(usage: Usage, provider: str, model: str) -> Cost:
    """The cost of one call's ``usage`` on ``provider``'s ``model`` (the id the provider
    answered with, or the one requested)."""
    price = _prices.get(f"{provider}:{model}")
    if price is not None:
        inp, out = price.cost(usage)
        return Cost(inp + out, inp, out, source="set_price")
    if _is_local(provider):
        zero = Decimal(0)
        return Cost(zero, zero, zero, source="local")
    try:
        import genai_prices
    except ImportError:
        return Cost(None, reason="genai-prices is not installed: pip install 'modelplug[cost]'")
    prices_usage = genai_prices.Usage(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_creation_tokens,
        input_audio_tokens=usage.audio_input_tokens or None,
        output_audio_tokens=usage.audio_output_tokens or None)
    try:
        calc = genai_prices.calc_price(prices_usage, model,
                                       provider_id=_PRICE_PROVIDER.get(provider, provider))
    except LookupError as exc:
        return Cost(None, reason=f"no price for {provider}:{model} in genai-prices "
                                 f"{genai_prices.__version__} ({exc}); set one with "
                                 "modelplug.accounting.set_price")
    return Cost(calc.total_price, calc.input_price, calc.output_price,
                source=f"genai-prices {genai_prices.__version__}")


@dataclass
class ModelTotals:
    """Tokens and cost of one model's answered calls, and its failed attempts."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    #: Sum of the known costs; ``unpriced_calls`` says how many calls it leaves out.
    cost: Decimal = Decimal(0)
    unpriced_calls: int = 0
    #: Fallback attempts on this model that failed (or were skipped), and calls that raised.
    failed_attempts: int = 0


class UsageTotals:
    """Per-model totals across many calls (a chain, an agent run, a query); the framework
    handlers feed it. Thread-safe: callbacks of parallel runs may arrive on several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_model: dict[str, ModelTotals] = {}

    def add(self, model: str, usage: Usage, cost: Cost | dict[str, Any] | None) -> None:
        """One answered call of ``model`` (``"provider:model_id"``)."""
        total = cost.total if isinstance(cost, Cost) else (cost or {}).get("total")
        with self._lock:
            row = self.by_model.setdefault(model, ModelTotals())
            row.calls += 1
            row.input_tokens += usage.input_tokens
            row.output_tokens += usage.output_tokens
            row.cache_read_tokens += usage.cache_read_tokens
            row.cache_creation_tokens += usage.cache_creation_tokens
            row.reasoning_tokens += usage.reasoning_tokens
            row.audio_input_tokens += usage.audio_input_tokens
            row.audio_output_tokens += usage.audio_output_tokens
            if total is None:
                row.unpriced_calls += 1
            else:
                row.cost += Decimal(str(total))

    def add_failure(self, model: str) -> None:
        with self._lock:
            self.by_model.setdefault(model, ModelTotals()).failed_attempts += 1

    @property
    def total_cost(self) -> Decimal:
        """The known cost of every model; check ``unpriced_calls`` before calling it complete."""
        return sum((row.cost for row in self.by_model.values()), Decimal(0))

    @property
    def total_tokens(self) -> int:
        return sum(row.input_tokens + row.output_tokens for row in self.by_model.values())

    def reset(self) -> None:
        with self._lock:
            self.by_model.clear()
