"""Seconds per denoising step, predicted from the work of one step and the speed of this device.

One step runs every transformer block over all tokens of the batched CFG pass. Its work:
- linear layers: each token passes through its stream's attention projections (4 h^2) and MLP (8 h^2),
  2 FLOP per weight, so 24 h^2 per token and block;
- attention: 4 N^2 h per block and sample (scores and the weighted sum).
That gives ~345 TFLOP for Edit 1024x1024 with one reference and CFG (field notes: ~335).

Streamed blocks cross PCIe once per step, on a copy stream that runs ahead of the compute, so a step
takes the longer of the two. The device's speed is measured by optim/execution/device_speed.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..qwen.job_shape import JobShape
from .model_sizes import ModelSizes
from .plan import Plan

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


def streamed_bytes_per_step(sizes: ModelSizes, plan: Plan) -> int:
    """Weights that cross from host to GPU in one step (one pass with batched CFG)."""
    return len(plan.streamed_blocks) * sizes.block_bytes


def estimate_step(
    sizes: ModelSizes, job: JobShape, plan: Plan, speed: DeviceSpeed, transformer_precision: str = "auto"
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
