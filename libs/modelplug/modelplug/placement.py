"""Memory-aware placement of in-process pipelines.

:func:`plan_placement` is pure: model sizes and each GPU's free memory in, a decision out. Pin the
whole model to the freest GPU when it fits; else keep components on the CPU and move each to the
GPU while it runs (model CPU offload) when the largest component fits; else stream weights layer by
layer (sequential CPU offload). ``device`` pins and ``device_map`` hands placement to
diffusers/accelerate, both overriding the measurement. :func:`free_gpu_memory` is the one probe
(torch, imported lazily), counting memory other processes hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Strategy = Literal["device", "model_offload", "sequential_offload", "device_map"]

#: Room for activations, the VAE decode and the allocator: a model "fits" when its weights times
#: this factor are free.
HEADROOM = 1.2


@dataclass(frozen=True)
class Placement:
    strategy: Strategy
    #: "cuda:N" / "mps" / "cpu" for "device"; the GPU the offload hooks move work to otherwise.
    device: str | None = None
    device_map: Any = None
    reason: str = ""


def plan_placement(model_bytes: int, largest_component_bytes: int,
                   free_per_gpu: Sequence[int], *, device: str | None = None,
                   device_map: Any = None, accelerator: str = "cuda",
                   fallback_device: str = "cpu", headroom: float = HEADROOM) -> Placement:
    """Where a model of ``model_bytes`` (largest component ``largest_component_bytes``) goes.

    ``free_per_gpu[i]`` is GPU i's free memory in bytes (empty: no GPU). ``fallback_device`` is
    where a machine without GPUs runs the model (``"mps"`` on Apple silicon, else ``"cpu"``).
    """
    if device is not None and device_map is not None:
        raise ValueError("Pass either device or device_map, not both.")
    if device is not None:
        return Placement("device", device, reason=f"pinned by device={device!r}")
    if device_map is not None:
        return Placement("device_map", device_map=device_map,
                         reason="device_map handed to diffusers/accelerate")
    if not free_per_gpu:
        return Placement("device", fallback_device, reason="no GPU")
    gpu = max(range(len(free_per_gpu)), key=lambda i: free_per_gpu[i])
    free, target = free_per_gpu[gpu], f"{accelerator}:{gpu}"
    gib = 1024 ** 3
    sizes = (f"model {model_bytes / gib:.2f} GiB, largest component "
             f"{largest_component_bytes / gib:.2f} GiB, {target} free {free / gib:.2f} GiB")
    if model_bytes * headroom <= free:
        return Placement("device", target, reason=f"fits on the freest GPU ({sizes})")
    if largest_component_bytes * headroom <= free:
        return Placement("model_offload", target,
                         reason=f"too big for one GPU, largest component fits ({sizes})")
    return Placement("sequential_offload", target,
                     reason=f"largest component too big for any GPU ({sizes})")


def free_gpu_memory() -> list[int]:
    """Free bytes on each visible CUDA GPU (what other processes hold is already taken off)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]


def fallback_device() -> str:
    """Where a machine with no CUDA GPU runs a model: MPS when present, else the CPU."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def module_bytes(module: Any) -> int:
    """Bytes of a torch module's parameters and buffers."""
    return sum(t.numel() * t.element_size()
               for t in (*module.parameters(), *module.buffers()))


__all__ = ["HEADROOM", "Placement", "fallback_device", "free_gpu_memory", "module_bytes",
           "plan_placement"]
