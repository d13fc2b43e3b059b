"""The devices a run may use, read from the machine: which GPUs, and what each budget means there.

The planner is pure; this is where "auto", "8 GB" and "all" become bytes and device names.
"""

from __future__ import annotations

import importlib.util

import torch

from ..errors import QwenFitError
from ..planning.planner import Gpu
from ..settings import CARD_BUDGETS, GIB, VRAM_BUDGETS, OffloadSettings

# What "auto" leaves free of the memory the driver reports free when the plan is made.
_AUTO_MARGIN = 512 * 1024**2
FP8_MATMUL_GPUS = "RTX 40xx/50xx, L4, L40, RTX 6000 Ada, H100, H200, B200"


def indexed(device: torch.device | str) -> torch.device:
    """``device`` with its index ("cuda" -> "cuda:0"), so devices compare equal however they were named."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def usable_bytes(budget: str, device: torch.device) -> int | None:
    """Bytes the plan may use on ``device`` under ``budget``; None means no limit."""
    if budget not in VRAM_BUDGETS:
        raise QwenFitError(f"VRAM budget {budget!r} is not supported; pick one of {', '.join(VRAM_BUDGETS)}.")
    if device.type != "cuda" or budget == "unlimited":
        return None
    if budget == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        # Memory this process already holds in its cache is free for the plan too.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return max(free + cached - _AUTO_MARGIN, 0)
    return int(CARD_BUDGETS[budget] * GIB)


CPU_NOTE = "no GPU: everything runs on the CPU, weights and activations in host RAM; a VRAM budget applies on a GPU"


def resolve_gpus(offload: OffloadSettings, device: torch.device) -> tuple[tuple[Gpu, ...], tuple[str, ...]]:
    """The devices a plan may use (``device`` first), each with the budget ``offload.vram_budget`` gives
    it there, and notes for the plan: the CPU runs everything, or ``offload.gpus`` asked for several GPUs
    and fewer exist."""
    device = indexed(device)
    one = (_gpu(offload, device),)
    if device.type != "cuda":
        several = (
            ("multi-GPU preset: no GPU is visible, so everything runs on the CPU",) if offload.gpus == "all" else ()
        )
        return one, (*several, CPU_NOTE)
    if offload.gpus != "all":
        return one, ()
    others = [torch.device("cuda", i) for i in range(torch.cuda.device_count()) if i != device.index]
    if not others:
        name = torch.cuda.get_device_name(device)
        return one, (f"multi-GPU preset: only one GPU is visible ({device}, {name}), so it runs on that GPU alone",)
    return tuple(_gpu(offload, d) for d in [device, *others]), ()


def _gpu(offload: OffloadSettings, device: torch.device) -> Gpu:
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return Gpu(str(device), usable_bytes(offload.vram_budget, device), capability)


def can_compile(device: torch.device) -> bool:
    """torch.compile's GPU code generator (Triton) is installed (often missing on Windows)."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def check_fp8_matmul(device: torch.device) -> None:
    """Refuse fp8 matmuls on a GPU without fp8 tensor cores (compute capability below 8.9)."""
    if device.type != "cuda":
        return  # the CPU path expands the weights; nothing to refuse
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise QwenFitError(
            f"fp8_e4m3fn_fast needs fp8 tensor cores (compute capability 8.9 or newer: {FP8_MATMUL_GPUS}); "
            f"this GPU is {major}.{minor}. Use fp8_e4m3fn (fp8 storage, bf16 compute), which runs on any GPU."
        )
