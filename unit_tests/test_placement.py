"""Memory-aware placement as a pure function: sizes and free memory in, a decision out."""

from __future__ import annotations

import pytest

from modelplug.placement import HEADROOM, plan_placement

GiB = 1024 ** 3


def test_no_gpu_runs_on_the_fallback_device() -> None:
    assert plan_placement(4 * GiB, 2 * GiB, []).strategy == "device"
    assert plan_placement(4 * GiB, 2 * GiB, []).device == "cpu"
    assert plan_placement(4 * GiB, 2 * GiB, [], fallback_device="mps").device == "mps"


def test_pins_to_the_freest_gpu_when_the_model_fits() -> None:
    placement = plan_placement(10 * GiB, 5 * GiB, [8 * GiB, 20 * GiB, 15 * GiB])
    assert (placement.strategy, placement.device) == ("device", "cuda:1")
    assert "fits" in placement.reason


def test_free_memory_decides_not_the_gpu_order() -> None:
    """GPU 0 is bigger but another process holds most of it: the freer GPU 1 wins."""
    placement = plan_placement(6 * GiB, 3 * GiB, [2 * GiB, 7.5 * GiB])
    assert placement.device == "cuda:1" and placement.strategy == "device"


def test_headroom_counts() -> None:
    """Weights that only just fit leave no room for activations: offload instead."""
    free = int(10 * GiB * HEADROOM)
    assert plan_placement(10 * GiB, 4 * GiB, [free]).strategy == "device"
    assert plan_placement(10 * GiB, 4 * GiB, [free - 1]).strategy == "model_offload"


def test_model_offload_when_only_the_largest_component_fits() -> None:
    placement = plan_placement(30 * GiB, 12 * GiB, [16 * GiB, 10 * GiB])
    assert (placement.strategy, placement.device) == ("model_offload", "cuda:0")


def test_sequential_offload_when_no_component_fits() -> None:
    placement = plan_placement(30 * GiB, 20 * GiB, [16 * GiB, 10 * GiB])
    assert (placement.strategy, placement.device) == ("sequential_offload", "cuda:0")
    assert "largest component" in placement.reason


def test_device_and_device_map_override_the_measurement() -> None:
    pinned = plan_placement(30 * GiB, 20 * GiB, [1 * GiB], device="cuda:1")
    assert (pinned.strategy, pinned.device) == ("device", "cuda:1")
    mapped = plan_placement(30 * GiB, 20 * GiB, [1 * GiB], device_map="balanced")
    assert (mapped.strategy, mapped.device_map) == ("device_map", "balanced")
    with pytest.raises(ValueError, match="either device or device_map"):
        plan_placement(1, 1, [], device="cpu", device_map="balanced")
