"""The devices a run may use, read from the machine: which GPUs, and what each budget means there.

The planner is pure; this is where "auto", "8 GB" and "all" become bytes and device names.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import replace

import torch

from ..errors import QwenFitError
from ..planning.planner import Gpu
from ..settings import CARD_BUDGETS, GIB, VRAM_BUDGETS, OffloadSettings
from .device_speed import device_speed, known_device_speed

# What "auto" leaves free of the memory the driver reports free when the plan is made.
_AUTO_MARGIN = 512 * 1024**2
# GPUs whose measured speeds differ by less than this count as equally fast (measurement noise).
SAME_SPEED = 0.1
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


def resolve_gpus(
    offload: OffloadSettings, device: torch.device, may_measure_speed: Callable[[], bool] = lambda: True
) -> tuple[tuple[Gpu, ...], tuple[str, ...]]:
    """The devices a plan may use (``device`` first), each with the budget ``offload.vram_budget`` gives
    it there, and notes for the plan: the CPU runs everything, or ``offload.gpus`` asked for several GPUs
    and fewer exist. Several GPUs get their relative speeds (``relative_speeds``); ``may_measure_speed``
    is asked before a GPU's speed is first measured (without it, the GPUs count as equally fast)."""
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
    gpus = tuple(_gpu(offload, d) for d in [device, *others])
    speeds = relative_speeds([device, *others], may_measure_speed)
    gpus = tuple(replace(g, speed=s) for g, s in zip(gpus, speeds, strict=True))
    if len(set(speeds)) == 1:
        return gpus, ()
    measured = ", ".join(f"{g.device} {g.speed:.2f}" for g in gpus)
    return gpus, (f"GPU speeds measured (bf16 matmuls, relative to the first): {measured}",)


def relative_speeds(devices: list[torch.device], may_measure_speed: Callable[[], bool]) -> tuple[float, ...]:
    """Each GPU's bf16 matmul rate over the first's (measured once per GPU and remembered). Within
    ``SAME_SPEED`` of the first counts as equal (1.0), so measurement noise does not share the work
    unevenly between identical GPUs; all 1.0 when a speed is not known and may not be measured now."""
    rates = []
    for device in devices:
        speed = known_device_speed(device, torch.bfloat16)
        if speed is None:
            if not may_measure_speed():
                return (1.0,) * len(devices)
            speed = device_speed(device, torch.bfloat16)
        rates.append(speed.matmul_flops)
    ratios = [rate / rates[0] for rate in rates]
    return tuple(1.0 if abs(r - 1) <= SAME_SPEED else r for r in ratios)


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
