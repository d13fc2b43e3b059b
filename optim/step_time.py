"""Seconds per denoising step, predicted from the work of one step and the speed of this device.

One step runs every transformer block over all tokens of the batched CFG pass. Its work:
- linear layers: each token passes through its stream's attention projections (4 h^2) and MLP (8 h^2),
  2 FLOP per weight, so 24 h^2 per token and block;
- attention: 4 N^2 h per block and sample (scores and the weighted sum).
That gives ~345 TFLOP for Edit 1024x1024 with one reference and CFG (field notes: ~335).

Streamed blocks cross PCIe once per step, on a copy stream that runs ahead of the compute, so a step
takes the longer of the two. The device's matmul rate and pinned copy rate are measured once, with
small buffers (24 MiB of VRAM, 32 MiB of pinned memory), never while a run holds the GPU.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from .job_shape import JobShape
from .model_sizes import ModelSizes
from .planner import MemoryPlan

# Share of the measured matmul rate a whole step reaches, and the fixed cost of one block call
# (kernel launches, Python). Fitted to the H200 run of 2026-11-22 (bench/results): bf16, all
# resident, 0.727 s/step for Edit 1024 (~345 TFLOP) at 806 TFLOP/s measured.
EFFICIENCY = 0.61
BLOCK_OVERHEAD_S = 0.0005
# Compressed weights are expanded on the GPU before each matmul: measured step time over bf16's,
# same run (8 GB preset rows). fp8 matmuls have no measured figure yet: counted as bf16.
EXPANSION_COST = {"fp8_e4m3fn": 1.08, "int8": 1.075, "nf4": 1.135}


@dataclass(frozen=True)
class DeviceSpeed:
    """What one device does per second: matmul FLOP in the compute dtype, pinned host-to-device bytes."""

    device: str
    matmul_flops: float
    host_to_device_bytes: float | None  # None on the CPU (nothing to copy)


@dataclass(frozen=True)
class StepEstimate:
    """A predicted denoising step and how it was reached."""

    seconds: float
    compute_seconds: float
    transfer_seconds: float
    flops: float
    streamed_bytes: int
    basis: str


def step_flops(sizes: ModelSizes, job: JobShape) -> float:
    """FLOP of one denoising step of ``job`` (all samples of the batched CFG pass)."""
    tokens = job.image_tokens + job.text_tokens
    h = sizes.hidden
    per_block = tokens * 24 * h * h + 4 * tokens * tokens * h
    return float(job.samples * sizes.blocks * per_block)


def streamed_bytes_per_step(sizes: ModelSizes, plan: MemoryPlan) -> int:
    """Weights that cross from host to GPU in one step (one pass with batched CFG)."""
    return len(plan.streamed_blocks) * sizes.block_bytes


def estimate_step(
    sizes: ModelSizes, job: JobShape, plan: MemoryPlan, speed: DeviceSpeed, transformer_precision: str = "auto"
) -> StepEstimate:
    """Predicted seconds per denoising step for ``job`` under ``plan`` on a device of ``speed``."""
    flops = step_flops(sizes, job)
    expansion = EXPANSION_COST.get(transformer_precision, 1.0)
    compute = flops / (speed.matmul_flops * EFFICIENCY) * expansion + sizes.blocks * BLOCK_OVERHEAD_S
    streamed = streamed_bytes_per_step(sizes, plan)
    transfer = streamed / speed.host_to_device_bytes if streamed and speed.host_to_device_bytes else 0.0
    bound = "copy-bound" if transfer > compute else "compute-bound"
    basis = (
        f"{flops / 1e12:.3g} TFLOP per step at {speed.matmul_flops / 1e12:.3g} TFLOP/s measured on {speed.device}"
        + (
            f"; {streamed / 2**30:.2f} GiB streamed per step at {speed.host_to_device_bytes / 2**30:.1f} GiB/s "
            f"({bound})"
            if streamed and speed.host_to_device_bytes
            else ""
        )
    )
    return StepEstimate(max(compute, transfer), compute, transfer, flops, streamed, basis)


# Each rate is the best of a few trials: a busy machine only ever slows a trial down.
TRIALS = 3


def _time_matmul(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up (kernel selection)
    best = 0.0
    for _ in range(TRIALS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def _time_copy(device: torch.device, nbytes: int, repeats: int) -> float:
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target.copy_(host, non_blocking=True)
    best = 0.0
    for _ in range(TRIALS):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            target.copy_(host, non_blocking=True)
        torch.cuda.synchronize(device)
        best = max(best, nbytes * repeats / (time.perf_counter() - start))
    return best


_speeds: dict[tuple[str, torch.dtype], DeviceSpeed] = {}
_speed_lock = threading.Lock()


def known_device_speed(device: torch.device, dtype: torch.dtype) -> DeviceSpeed | None:
    """The speed measured earlier for ``device`` and ``dtype``, if any (measures nothing)."""
    with _speed_lock:
        return _speeds.get((str(device), dtype))


def device_speed(device: torch.device, dtype: torch.dtype) -> DeviceSpeed:
    """Measure (once per device and dtype, then remembered) the matmul and copy rates of ``device``."""
    key = (str(device), dtype)
    with _speed_lock:
        if key not in _speeds:
            with torch.inference_mode():
                if device.type == "cuda":
                    name = f"{device} ({torch.cuda.get_device_name(device)})"
                    flops = _time_matmul(device, dtype, 2048, 20)
                    copy = _time_copy(device, 32 * 2**20, 8)
                else:
                    name, flops, copy = "the CPU", _time_matmul(device, dtype, 384, 8), None
            _speeds[key] = DeviceSpeed(name, flops, copy)
        return _speeds[key]
