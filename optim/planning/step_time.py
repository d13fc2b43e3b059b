"""Seconds per denoising step, predicted from the work of one step and the speed of this device.

One step runs every transformer block over all tokens of the batched CFG pass. Its work:
- linear layers: each token passes through its stream's attention projections (4 h^2) and MLP (8 h^2),
  2 FLOP per weight, so 24 h^2 per token and block;
- attention: 4 N^2 h per block and sample (scores and the weighted sum).
That gives ~345 TFLOP for Edit 1024x1024 with one reference and CFG (field notes: ~335).

Streamed blocks cross PCIe once per step, on a copy stream that runs ahead of the compute, so a step
takes the longer of the two; blocks the host plan leaves in the files are also read at every step, on
reader threads ahead of the copies (the longest of the three). The device's speed is measured by
optim/execution/device_speed.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..qwen.job_shape import JobShape
from .model_sizes import ModelSizes
from .plan import CFG_PARALLEL, SEQUENCE_PARALLEL, Plan
from .strategy_choice import compute_shares

# The step cache's fixed schedule: the first CACHE_WARMUP steps, one in CACHE_INTERVAL after, and the last
# step run the transformer (optim/execution/step_cache.py extrapolates the others).
CACHE_WARMUP, CACHE_INTERVAL = 2, 2


def cache_schedule(steps: int) -> tuple[int, ...]:
    """The steps whose transformer runs under the step cache."""
    return tuple(
        i for i in range(steps) if i < CACHE_WARMUP or (i - CACHE_WARMUP + 1) % CACHE_INTERVAL == 0 or i == steps - 1
    )


def computed_fraction(steps: int, steady: bool = False) -> float:
    """Share of the steps (all, or all but the first: ``steady``) whose transformer runs under the cache."""
    first = 1 if steady and steps > 1 else 0
    counted = steps - first
    return sum(1 for i in cache_schedule(steps) if i >= first) / counted if counted > 0 else 1.0


# Share of the measured matmul rate a whole step reaches, and the fixed cost of one block call
# (kernel launches, Python). Fitted to the H200 run of 2026-11-22 (bench/results): bf16, all
# resident, 0.727 s/step for Edit 1024 (~345 TFLOP) at 806 TFLOP/s measured.
EFFICIENCY = 0.61
BLOCK_OVERHEAD_S = 0.0005
# Compressed weights are expanded on the GPU before each matmul: measured step time over bf16's,
# same run (8 GB preset rows). fp8 matmuls have no measured figure yet: counted as bf16.
EXPANSION_COST = {"fp8_e4m3fn": 1.08, "int8": 1.075, "nf4": 1.135}
# The fast rungs: the linear layers at the measured rate of the 8-bit product (inputs quantized), reaching
# this share of it in compiled blocks; attention and the elementwise work as in EFFICIENCY. Fitted to the
# H200 runs of 2026-11-30 (bench/results/bench_*_speed_h200_2026-11-30*).
FAST_EFFICIENCY = {"fp8": 0.87, "int8": 0.8}
# Uncompiled fast blocks (auto's rung: no compile on any image) run their norms, modulation, RoPE and activation as
# separate kernels: 0.692 s/step against the compiled 0.461 (H100, 2026-12-07, bench/results/2026-12-07_native08).
UNCOMPILED_FAST_COST = 0.692 / 0.461


# Blocks read from the files at every step, while the files sit in the page cache: 8 reader threads read 8 GiB
# of the fp8 file into page-locked memory at 36 GB/s on the H200 host, 2.1 GB/s from its disk with the pages
# dropped (bench/results/ram16_h200_2026-11-30/read_rate.json). An NVMe drive reads 3.5 GB/s at best.
PAGE_CACHE_READ_BYTES = 36e9


@dataclass(frozen=True)
class DeviceSpeed:
    """What one device does per second: matmul FLOP in the compute dtype, pinned host-to-device bytes."""

    device: str
    matmul_flops: float
    host_to_device_bytes: float | None  # None on the CPU (nothing to copy)
    fast_matmul_flops: tuple[tuple[str, float], ...] = ()  # ("fp8" | "int8", FLOP/s) measured where they run


@dataclass(frozen=True)
class StepEstimate:
    """A predicted denoising step and how it was reached."""

    seconds: float
    compute_seconds: float
    transfer_seconds: float
    flops: float
    streamed_bytes: int
    basis: str
    read_seconds: float = 0.0  # blocks read from the files (page cache rate)
    read_bytes: int = 0


def step_flops(sizes: ModelSizes, job: JobShape) -> float:
    """FLOP of one denoising step of ``job`` (all samples of the batched CFG pass)."""
    linear, attention = _flops(sizes, job)
    return linear + attention


def _flops(sizes: ModelSizes, job: JobShape) -> tuple[float, float]:
    """(linear-layer, attention) FLOP of one step."""
    tokens = job.image_tokens + job.text_tokens
    h, n = sizes.hidden, job.samples * sizes.blocks
    return float(n * tokens * 24 * h * h), float(n * 4 * tokens * tokens * h)


def streamed_bytes_per_step(sizes: ModelSizes, plan: Plan) -> int:
    """Weights that cross from host to GPU in one step (one pass with batched CFG); CFG-parallel and
    sequence-parallel: on the GPU that streams the most (each GPU streams over its own link)."""
    if plan.device_resident:
        return (sizes.blocks - min(plan.device_resident)) * sizes.block_bytes
    return len(plan.streamed_blocks) * sizes.block_bytes


def file_bytes_per_step(sizes: ModelSizes, plan: Plan) -> int:
    """Weights read from the model files in one step: the streamed blocks the host plan left there."""
    in_files = plan.host.blocks_in_files if plan.host is not None else 0
    return sum(1 for block in plan.streamed_blocks if block < in_files) * sizes.block_bytes


def _block_launches(plan: Plan) -> float:
    """How many blocks' worth of kernels the one queuing thread launches per block of the model: once per
    GPU for CFG-parallel; sequence-parallel, the other GPUs queue no text kernels (about half a block)."""
    others = len(plan.devices) - 1
    if plan.strategy == CFG_PARALLEL:
        return 1 + others
    if plan.strategy == SEQUENCE_PARALLEL:
        return 1 + others / 2
    return 1


def estimate_step(
    sizes: ModelSizes,
    job: JobShape,
    plan: Plan,
    speed: DeviceSpeed,
    transformer_precision: str = "auto",
    steady: bool = False,
) -> StepEstimate:
    """Predicted seconds per denoising step for ``job`` under ``plan`` on a device of ``speed``; with the
    step cache, averaged over the run's steps (``steady``: over all but the first, as the benchmark
    measures)."""
    linear, attention = _flops(sizes, job)
    flops = linear + attention
    arithmetic = plan.arithmetic
    fast_rate = dict(speed.fast_matmul_flops).get(arithmetic.kind)
    if fast_rate:
        compute = linear / (fast_rate * FAST_EFFICIENCY[arithmetic.kind]) + attention / (
            speed.matmul_flops * EFFICIENCY
        )
        if not arithmetic.compiled:
            compute *= UNCOMPILED_FAST_COST
    else:  # exact (or no 8-bit rate measured): every weight expanded, bf16 products
        expansion = EXPANSION_COST.get(transformer_precision, 1.0)
        compute = flops / (speed.matmul_flops * EFFICIENCY) * expansion
    compute = compute * max(compute_shares(plan)) + sizes.blocks * BLOCK_OVERHEAD_S * _block_launches(plan)
    streamed = streamed_bytes_per_step(sizes, plan)
    transfer = streamed / speed.host_to_device_bytes if streamed and speed.host_to_device_bytes else 0.0
    read = file_bytes_per_step(sizes, plan)
    read_seconds = read / PAGE_CACHE_READ_BYTES
    bound = "copy-bound" if transfer > compute else "compute-bound"
    if read_seconds > max(compute, transfer):
        bound = "read-bound"
    share = computed_fraction(job.steps, steady) if arithmetic.step_cache else 1.0
    basis = (
        f"{flops / 1e12:.3g} TFLOP per step at {speed.matmul_flops / 1e12:.3g} TFLOP/s measured on {speed.device}"
        + (
            f"; {streamed / 2**30:.2f} GiB streamed per step at {speed.host_to_device_bytes / 2**30:.1f} GiB/s "
            f"({bound})"
            if streamed and speed.host_to_device_bytes
            else ""
        )
        + (
            f"; {read / 2**30:.2f} GiB read from the model files per step at "
            f"{PAGE_CACHE_READ_BYTES / 1e9:.1f} GB/s (page cache; a 3.5 GB/s drive: "
            f"{read / 3.5e9:.2f} s){'' if bound != 'read-bound' else ' (read-bound)'}"
            if read
            else ""
        )
        + (f"; {arithmetic.kind} products at {fast_rate / 1e12:.3g} TFLOP/s measured" if fast_rate else "")
        + (f"; step cache: the transformer runs on {share:.0%} of the steps" if share < 1 else "")
    )
    seconds = max(compute, transfer, read_seconds) * share
    return StepEstimate(seconds, compute, transfer, flops, streamed, basis, read_seconds, read)
