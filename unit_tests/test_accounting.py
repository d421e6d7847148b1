"""modelplug.accounting: cost of generated usages against hand formulas from published prices."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelplug.accounting import Price, cost_of, set_price
from modelplug.types import Usage

M = Decimal(1_000_000)


@st.composite
def usages(draw) -> Usage:
    read = draw(st.integers(0, 200_000))
    write = draw(st.integers(0, 200_000))
    plain = draw(st.integers(0, 200_000))
    out = draw(st.integers(0, 100_000))
    return Usage(input_tokens=plain + read + write, output_tokens=out, cache_read_tokens=read,
                 cache_creation_tokens=write, reasoning_tokens=draw(st.integers(0, out)))


@given(usages())
def test_anthropic_price_is_the_published_linear_formula(usage: Usage) -> None:
    # claude-sonnet-4-6, USD per MTok: input 3, output 15, cache read 0.30, 5m cache write 3.75.
    plain = usage.input_tokens - usage.cache_read_tokens - usage.cache_creation_tokens
    inp = (plain * Decimal("3") + usage.cache_read_tokens * Decimal("0.30")
           + usage.cache_creation_tokens * Decimal("3.75")) / M
    out = usage.output_tokens * Decimal("15") / M
    cost = cost_of(usage, "anthropic", "claude-sonnet-4-6")
    assert (cost.input, cost.output, cost.total) == (inp, out, inp + out)


@given(usages())
def test_openai_reasoning_tokens_are_billed_once_as_output(usage: Usage) -> None:
    # o3-mini: input 1.10, output 4.40, cached input 0.55; no cache-write price (writes are input).
    plain = usage.input_tokens - usage.cache_read_tokens
    inp = (plain * Decimal("1.10") + usage.cache_read_tokens * Decimal("0.55")) / M
    cost = cost_of(usage, "openai", "o3-mini")
    assert cost.input == inp
    assert cost.output == usage.output_tokens * Decimal("4.40") / M


@given(usages(), st.sampled_from(["llamacpp", "hf", "ollama", "llamaserver", "vllm"]))
def test_local_models_cost_zero(usage: Usage, provider: str) -> None:
    cost = cost_of(usage, provider, "any-model")
    assert cost.total == 0 and cost.source == "local" and cost.reason is None


@given(usages())
def test_a_set_price_overrides_the_table_and_defaults_cache_to_input(usage: Usage) -> None:
    set_price("llamacpp:smollm2", Price(input_per_mtok="0.5", output_per_mtok=2))
    try:
        cost = cost_of(usage, "llamacpp", "smollm2")
    finally:
        set_price("llamacpp:smollm2", None)
    assert cost.source == "set_price"
    assert cost.total == (usage.input_tokens * Decimal("0.5") + usage.output_tokens * 2) / M
    assert cost_of(usage, "llamacpp", "smollm2").total == 0  # removed again


def test_unknown_models_and_providers_are_unknown_with_a_reason() -> None:
    for provider, model in [("openai", "gpt-nothing-9"), ("deepinfra", "acme/x"),
                            ("my-plugin", "m")]:
        cost = cost_of(Usage(10, 5), provider, model)
        assert cost.total is None and cost.input is None
        assert f"{provider}:{model}" in cost.reason and "set_price" in cost.reason
        assert cost.as_dict()["reason"] == cost.reason


def test_set_price_names_the_bad_model_string() -> None:
    with pytest.raises(ValueError, match="'smollm2'"):
        set_price("smollm2", Price(1, 1))
