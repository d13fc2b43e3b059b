"""The planner for several GPUs: which GPU holds which transformer blocks, or a replica per GPU.

The GPU the pipeline runs on (the first) always holds the VAE, the text encoder and the
transformer's small parts; the others hold transformer blocks only. Two strategies:

- **block split**: the blocks are spread over the GPUs in contiguous runs, so the activations hop
  GPUs a few times per step. All blocks on one GPU (with the text encoder alone on the first) is the
  case "text encoder and VAE on one GPU, transformer on another". Blocks that fit nowhere stream
  through a ring on the first GPU, as on one GPU.
- **CFG-parallel**: every block resident on two GPUs; the prompt's sample computes on the first, the
  negative prompt's on the second, at the same time, joined once per step.

Candidates are compared by what costs most: streamed blocks first, then whether CFG runs in
parallel, then a resident text encoder, no VAE tiling, fewer GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .errors import QwenFitError
from .job_shape import JobShape
from .model_sizes import ModelSizes
from .planner import (
    CFG_PARALLEL,
    COEFFICIENTS,
    GIB,
    ONE_GPU,
    SAFETY,
    SPLIT,
    Coefficients,
    MemoryPlan,
    denoise_activations,
    modulation_table_bytes,
    pinned_host_bytes,
    plan_memory,
    plan_record,
    primary_phases,
)
from .settings import MULTI_GPU_STRATEGIES


@dataclass(frozen=True)
class Gpu:
    """One GPU the plan may use: its torch name and the bytes the plan may take on it (None: no limit)."""

    device: str
    budget_bytes: int | None


def _secondary_phases(k: Coefficients, block_weights: int, denoise_transient: int) -> tuple[tuple[str, int], ...]:
    """A GPU that only holds blocks: their weights, and one block's transient memory while denoising."""
    base = k.fixed + block_weights
    return (("encode", base), ("denoise", base + denoise_transient), ("decode", base))


def _peak(phases: tuple[tuple[str, int], ...]) -> int:
    return max(p for _, p in phases)


def _split_counts(rooms: list[int], blocks: int) -> list[int]:
    """Blocks per GPU, all on one GPU when one holds them (the first preferred: no hops), else filled
    in order."""
    for index, room in enumerate(rooms):
        if room >= blocks:
            return [blocks if i == index else 0 for i in range(len(rooms))]
    counts, left = [], blocks
    for room in rooms:
        take = max(0, min(room, left))
        counts.append(take)
        left -= take
    return counts


def plan_gpus(
    sizes: ModelSizes,
    job: JobShape,
    gpus: Sequence[Gpu],
    mode: str = "auto",
    vae_tiling: str = "auto",
    vae_slicing: str = "auto",
    text_in_files: bool = False,
    modulation_in_files: bool = False,
    cfg: str = "batched",
    strategy: str = "auto",
    coefficients: Coefficients = COEFFICIENTS,
) -> MemoryPlan:
    """Place ``job`` over ``gpus`` (the pipeline's own GPU first), each within its budget.

    ``strategy``: "auto" (the planner compares both), "cfg_parallel" or "split" (only that one).
    With one GPU this is :func:`optim.planner.plan_memory`. Raises QwenFitError naming the fix when
    nothing fits, or when CFG-parallel was asked for and cannot run.
    """
    if strategy not in MULTI_GPU_STRATEGIES:
        raise QwenFitError(f"multi-GPU strategy {strategy!r} is not supported; pick one of {MULTI_GPU_STRATEGIES}.")
    if len(gpus) == 1:
        return plan_memory(
            sizes,
            job,
            gpus[0].budget_bytes,
            mode,
            vae_tiling,
            vae_slicing,
            coefficients,
            text_in_files=text_in_files,
            modulation_in_files=modulation_in_files,
            cfg=cfg,
        )
    k = coefficients
    slicing = vae_slicing == "on" or (vae_slicing == "auto" and job.kind == "layered")
    tiling_choices = {"on": (True,), "off": (False,)}.get(vae_tiling, (False, True))
    encode_choices = (False, True) if vae_tiling != "off" else (False,)
    text_choices = ("resident",) if job.caption else ("resident", "streamed")
    table = modulation_table_bytes(sizes, job) + sizes.dequant_workspace_bytes

    def transient(samples_cfg: str) -> tuple[int, int]:
        activations = denoise_activations(sizes, job, k, samples_cfg)
        return activations + table, int(k.fragmentation_margin * activations)

    def target(gpu: Gpu, margin: int) -> float:
        return math.inf if gpu.budget_bytes is None else gpu.budget_bytes * SAFETY - margin

    def make(
        strategy_name: str,
        counts: list[int],
        slots: int,
        text_mode: str,
        tiling: bool,
        encode_tiling: bool,
        denoise: int,
        margin: int,
        replica: int | None = None,
    ) -> MemoryPlan | None:
        """The plan for these block counts per GPU, or None when a GPU would exceed its budget."""
        resident = sum(counts)
        streamed = sizes.blocks - resident
        ring = slots * sizes.block_bytes if streamed else 0
        peaks = [
            primary_phases(
                sizes, job, k, counts[0] * sizes.block_bytes, ring, text_mode, tiling, encode_tiling, denoise
            )
        ]
        for count in counts[1:]:
            peaks.append(_secondary_phases(k, count * sizes.block_bytes, denoise if count else 0))
        if replica is not None:
            peaks[replica] = _secondary_phases(k, sizes.blocks * sizes.block_bytes, denoise)
        used = [0] + [i for i, count in enumerate(counts) if i and count]
        block_devices: list[int] = []
        for index, count in enumerate(counts):
            block_devices += [used.index(index)] * count if count else []
        if replica is not None:
            used.append(replica)
        if any(_peak(peaks[i]) > target(gpus[i], margin) for i in used):
            return None
        pinned = pinned_host_bytes(sizes, text_mode, text_in_files, modulation_in_files)
        vae = (tiling, encode_tiling, slicing)
        mode_cfg = CFG_PARALLEL if replica is not None else cfg
        plan = plan_record(
            sizes, job, gpus[0].budget_bytes, resident, slots, text_mode, vae, mode_cfg, peaks[0], pinned
        )
        return replace(
            plan,
            strategy=strategy_name if len(used) > 1 else ONE_GPU,
            devices=tuple(gpus[i].device for i in used),
            block_devices=tuple(block_devices) if len(used) > 1 else (),
            replica_device=gpus[replica].device if replica is not None else None,
            device_peaks=tuple((gpus[i].device, _peak(peaks[i])) for i in used),
        )

    def fill(slots: int, text_mode: str, tiling: bool, encode_tiling: bool, denoise: int, margin: int):
        """The split plan with ``slots`` ring slots (0: nothing streams) holding the most resident
        blocks, or None when it does not fit."""
        ring = slots * sizes.block_bytes
        empty = primary_phases(sizes, job, k, 0, ring, text_mode, tiling, encode_tiling, denoise)
        rooms = [target(gpus[0], margin) - _peak(empty)]
        rooms += [target(g, margin) - _peak(_secondary_phases(k, 0, denoise)) for g in gpus[1:]]
        if rooms[0] < 0:
            return None
        fits = [sizes.blocks if r == math.inf else max(0, int(r // sizes.block_bytes)) for r in rooms]
        if mode == "blocks":
            fits = [0] * len(gpus)
        if slots == 0 and sum(fits) < sizes.blocks:
            return None  # not everything fits resident: the caller tries a ring next
        counts = _split_counts(fits, sizes.blocks)
        return make(SPLIT, counts, slots, text_mode, tiling, encode_tiling, denoise, margin)

    candidates: list[MemoryPlan] = []
    parallel_possible = job.cfg and cfg != "two_calls" and mode != "blocks"
    if strategy in ("auto", "cfg_parallel") and parallel_possible:
        # The replica goes to the other GPU with the most room; each GPU computes one sample.
        denoise, margin = transient("two_calls")
        replica = max(range(1, len(gpus)), key=lambda i: target(gpus[i], margin))
        counts = [sizes.blocks] + [0] * (len(gpus) - 1)
        for tiling in tiling_choices:
            for text_mode in text_choices:
                for encode_tiling in encode_choices:
                    plan = make(CFG_PARALLEL, counts, 0, text_mode, tiling, encode_tiling, denoise, margin, replica)
                    if plan is not None:
                        candidates.append(plan)
                        break
    if strategy in ("auto", "split"):
        denoise, margin = transient(cfg)
        slot_choices = (0,) if mode == "none" else (0, 3, 2)
        for tiling in tiling_choices:
            for text_mode in text_choices:
                for encode_tiling in encode_choices:
                    for slots in slot_choices:
                        plan = fill(slots, text_mode, tiling, encode_tiling, denoise, margin)
                        if plan is not None:
                            candidates.append(plan)
                            break
                    else:
                        continue
                    break  # untiled encoding fits: never tile it (tiles change the reference latents)
    if not candidates:
        if strategy == "cfg_parallel":
            need = sizes.blocks * sizes.block_bytes / GIB
            why = (
                "this job runs without CFG (a Lightning LoRA, or CFG scale 1)"
                if not job.cfg
                else "CFG 'two_calls' was chosen"
                if cfg == "two_calls"
                else f"it needs every transformer block ({need:.1f} GiB) plus activations on each of two GPUs"
            )
            raise QwenFitError(f"CFG-parallel cannot run: {why}. Pick multi_gpu 'auto' or 'split'.")
        # Nothing fits even with every block streamed: the one-GPU planner names the budget that would.
        plan_memory(sizes, job, gpus[0].budget_bytes, "auto", vae_tiling, vae_slicing, k, cfg=cfg)
        raise QwenFitError(
            f"this job ({job.describe()}) does not fit these GPUs' budgets with every block streamed; "
            "pick a larger VRAM budget."
        )
    return max(candidates, key=_preference)


def _preference(plan: MemoryPlan) -> tuple:
    return (
        len(plan.resident_blocks),
        plan.strategy == CFG_PARALLEL,
        plan.text_encoder == "resident",
        not plan.vae_encode_tiling,
        not plan.vae_tiling,
        -len(plan.devices),
        plan.slots,
    )
