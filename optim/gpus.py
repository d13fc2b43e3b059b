"""Which GPUs a pipeline may use: the one ComfyUI runs on, or every visible one."""

from __future__ import annotations

import torch

from .budget import usable_bytes
from .devices import indexed
from .multi_gpu_planner import Gpu


def gpus_for(choice: str, vram_budget: str, device: torch.device) -> tuple[tuple[Gpu, ...], str | None]:
    """The GPUs a plan may use, each with the budget ``vram_budget`` gives it there, and a note when
    ``choice`` asked for several GPUs and fewer exist. An empty tuple means one device (no multi-GPU plan)."""
    if choice != "all":
        return (), None
    if device.type != "cuda":
        return (), "multi-GPU preset: no GPU is visible, so everything runs on the CPU"
    first = indexed(device)
    others = [torch.device("cuda", i) for i in range(torch.cuda.device_count()) if i != first.index]
    if not others:
        name = torch.cuda.get_device_name(first)
        return (), f"multi-GPU preset: only one GPU is visible ({first}, {name}), so it runs on that GPU alone"
    return tuple(Gpu(str(d), usable_bytes(vram_budget, d)) for d in [first, *others]), None
