"""The memory planner: for a VRAM budget and a job, where every weight lives and what peak to expect.

Weights are known exactly (measured from the modules). Activations are modelled per phase with
coefficients measured on an H200 (bench/results/), so the prediction covers the whole generation:

- ``encode``: the text encoder (resident, or streamed unit by unit) and the VAE encoding the references;
- ``denoise``: resident blocks, the streaming ring, the modulation table and the activations of one
  block for all samples of the batched CFG pass;
- ``decode``: the VAE, tiled when the untiled decode would not fit.

Resident transformer blocks stay on the GPU through every phase, so the planner first sizes the
largest transient of all phases, then fills what is left of the budget with blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import QwenFitError
from .job_shape import JobShape
from .model_sizes import ModelSizes

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Coefficients:
    """Activation model, in bytes. Measured on an H200 with the real-size model (see bench/README.md)."""

    # Peak live activations of one block, per token of the batched pass, per hidden unit (bf16 = 2 bytes).
    # Fitted to the H200 run of 2026-11-22: Edit 1024x1024, one reference, CFG batched (~16.9k tokens).
    block_activation_per_token_unit: float = 2 * 20.0
    # Share of the activations kept free for allocator fragmentation (not part of the prediction).
    fragmentation_margin: float = 0.4
    # cuBLAS workspaces, RoPE tables, latents, prompt embeddings, allocator rounding.
    fixed: int = 384 * MIB
    # Untiled VAE, bytes per output pixel (4.37 GiB at 1024x1024 measured), encode per input pixel.
    vae_decode_per_pixel: float = 4.37 * GIB / 2**20
    vae_encode_per_pixel: float = 2.6 * GIB / 2**20
    vae_tiled: int = 640 * MIB
    # Text encoding activations (a few hundred tokens plus vision patches).
    text_activation: int = 512 * MIB


COEFFICIENTS = Coefficients()
# The plan aims below the budget by this much to absorb the activation model's error.
SAFETY = 0.93
# Multi-GPU strategies the plan can name.
ONE_GPU, SPLIT, CFG_PARALLEL = "one GPU", "block split", "CFG-parallel"


@dataclass(frozen=True)
class MemoryPlan:
    """The planner's decision for one budget and job."""

    budget_bytes: int | None
    resident_blocks: tuple[int, ...]
    streamed_blocks: tuple[int, ...]
    slots: int
    modulation: str  # "precomputed" (weights on the host) or "in blocks"
    text_encoder: str  # "resident" or "streamed"
    vae_tiling: bool  # decoding
    vae_encode_tiling: bool  # encoding the references: tiled only when untiled does not fit (tiles change latents)
    vae_slicing: bool
    cfg: str  # "interleaved", "batched", "two_calls", "off"
    phase_peaks: tuple[tuple[str, int], ...]
    predicted_peak_bytes: int
    pinned_bytes: int
    job: str
    notes: tuple[str, ...] = ()
    # Several GPUs (optim/multi_gpu_planner.py); the defaults describe a one-GPU plan.
    strategy: str = ONE_GPU
    devices: tuple[str, ...] = ()  # the GPUs the plan uses, the pipeline's own first
    block_devices: tuple[int, ...] = ()  # per resident block, its GPU (index into devices); () = the first
    replica_device: str | None = None  # CFG-parallel: the GPU computing the negative prompt
    device_peaks: tuple[tuple[str, int], ...] = ()  # predicted peak per GPU (phase_peaks are the first GPU's)


def denoise_activations(sizes: ModelSizes, job: JobShape, k: Coefficients, cfg: str = "batched") -> int:
    """Live activations of one block. Batched CFG computes every sample at once. Interleaved CFG
    computes one sample at a time, but measured (H200, 2026-11-22) it peaks as high: the 8 GB plan
    modelled at half the activations ran 12% over its prediction, so it is planned like batched.
    Two calls hold one sample's activations."""
    samples = 1 if cfg == "two_calls" else job.samples
    return int(samples * (job.image_tokens + job.text_tokens) * sizes.hidden * k.block_activation_per_token_unit)


def modulation_table_bytes(sizes: ModelSizes, job: JobShape) -> int:
    # Per step and block: img (up to 2 rows for 2511) + txt rows of 6 * hidden, bf16.
    return job.steps * sizes.blocks * 3 * 6 * sizes.hidden * 2


def _vae_peaks(job: JobShape, encode_tiling: bool, decode_tiling: bool, k: Coefficients) -> tuple[int, int]:
    """(encode, decode) transient bytes of the VAE; references are encoded one by one at ~1 MP,
    and slicing decodes one layer at a time."""
    encoded = 2**20 if job.kind == "edit" else job.width * job.height
    encode = k.vae_tiled if encode_tiling else int(encoded * k.vae_encode_per_pixel)
    decode = k.vae_tiled if decode_tiling else int(job.width * job.height * k.vae_decode_per_pixel)
    return encode, decode


def primary_phases(
    sizes: ModelSizes,
    job: JobShape,
    k: Coefficients,
    block_weights: int,
    ring: int,
    text_mode: str,
    tiling: bool,
    encode_tiling: bool,
    denoise_transient: int,
) -> tuple[tuple[str, int], ...]:
    """(phase, peak bytes) on the GPU the pipeline runs on: it holds the transformer's small parts, the
    VAE and the text encoder (resident, or streamed while encoding), ``block_weights`` of resident
    blocks and, while denoising, the streaming ring and one block's transient memory."""
    text_stream = 0 if text_mode == "resident" else 2 * sizes.text_unit_bytes
    text_weights = sizes.text_units_bytes + sizes.text_host_bytes if text_mode == "resident" else 0
    vae_encode, vae_decode = _vae_peaks(job, encode_tiling, tiling, k)
    base = sizes.transformer_rest_bytes + sizes.vae_bytes + sizes.text_rest_bytes + k.fixed
    base += block_weights + text_weights
    return (
        ("encode", base + max(text_stream + k.text_activation, vae_encode)),
        ("denoise", base + ring + denoise_transient),
        ("decode", base + vae_decode),
    )


def plan_record(
    sizes: ModelSizes,
    job: JobShape,
    budget_bytes: int | None,
    resident: int,
    slots: int,
    text_mode: str,
    vae: tuple[bool, bool, bool],
    cfg: str,
    phases: tuple[tuple[str, int], ...],
    pinned_bytes: int,
) -> MemoryPlan:
    """The plan with blocks ``0..resident-1`` resident and the rest streamed through ``slots``; ``vae`` is
    (decode tiling, encode tiling, slicing) and ``phases`` the first GPU's peaks. One GPU's fields only:
    a multi-GPU plan adds its own."""
    streamed = sizes.blocks - resident
    tiling, encode_tiling, slicing = vae
    return MemoryPlan(
        budget_bytes=budget_bytes,
        resident_blocks=tuple(range(resident)),
        streamed_blocks=tuple(range(resident, sizes.blocks)),
        slots=slots if streamed else 0,
        modulation="precomputed",
        text_encoder=text_mode,
        vae_tiling=tiling,
        vae_encode_tiling=encode_tiling,
        vae_slicing=slicing,
        cfg=cfg if job.cfg else "off",
        phase_peaks=phases,
        predicted_peak_bytes=max(p for _, p in phases),
        pinned_bytes=pinned_bytes,
        job=job.describe(),
    )


def pinned_host_bytes(sizes: ModelSizes, text_mode: str, text_in_files: bool, modulation_in_files: bool) -> int:
    """Page-locked host memory: the engine keeps every block and text unit in its arenas (a re-plan
    only copies); weights read from the files need only one staging buffer per slot."""
    text_pinned = sizes.text_units_bytes
    if text_in_files:
        text_pinned = 2 * sizes.text_unit_bytes if text_mode == "streamed" else 0
    modulation_pinned = 2 * sizes.modulation_bytes // sizes.blocks if modulation_in_files else sizes.modulation_bytes
    return sizes.blocks * sizes.block_bytes + text_pinned + modulation_pinned


def plan_memory(
    sizes: ModelSizes,
    job: JobShape,
    budget_bytes: int | None,
    mode: str = "auto",
    vae_tiling: str = "auto",
    vae_slicing: str = "auto",
    coefficients: Coefficients = COEFFICIENTS,
    text_encoder: str = "auto",
    text_in_files: bool = False,
    modulation_in_files: bool = False,
    cfg: str = "batched",
) -> MemoryPlan:
    """Place weights for ``job`` within ``budget_bytes`` (None: no limit).

    ``mode``: "auto" (the budget decides), "none" (everything resident), "blocks" (stream every block).
    ``text_encoder``: "auto", or force "resident" / "streamed".
    ``text_in_files`` / ``modulation_in_files``: those weights are read from the model files at each
    use (optim/host_plan.py), so only their staging buffers are page-locked.
    ``cfg``: how prompt and negative prompt run ("interleaved", "batched", "two_calls"; see
    optim/streaming/transformer_engine.py); it sets the activations of the denoising phase.
    Raises QwenFitError naming the smallest workable budget when nothing fits.
    """
    k = coefficients
    slicing = vae_slicing == "on" or (vae_slicing == "auto" and job.kind == "layered")
    tiling_choices = {"on": (True,), "off": (False,)}.get(vae_tiling, (False, True))
    activations = denoise_activations(sizes, job, k, cfg)
    denoise_transient = activations + modulation_table_bytes(sizes, job) + sizes.dequant_workspace_bytes

    def build(resident: int, slots: int, text_mode: str, tiling: bool, encode_tiling: bool = False) -> MemoryPlan:
        streamed = sizes.blocks - resident
        ring = slots * sizes.block_bytes if streamed else 0
        phases = primary_phases(
            sizes, job, k, resident * sizes.block_bytes, ring, text_mode, tiling, encode_tiling, denoise_transient
        )
        pinned = pinned_host_bytes(sizes, text_mode, text_in_files, modulation_in_files)
        vae = (tiling, encode_tiling, slicing)
        return plan_record(sizes, job, budget_bytes, resident, slots, text_mode, vae, cfg, phases, pinned)

    if budget_bytes is None or mode == "none":
        return build(sizes.blocks, 0, "resident", vae_tiling == "on")
    margin = k.fragmentation_margin * activations
    target = int(budget_bytes * SAFETY - margin)

    def budget_for(peak: int) -> str:
        """The budget (GiB, rounded up to 0.1) whose target is ``peak``."""
        return f"{math.ceil((peak + margin) / SAFETY / GIB * 10) / 10:.1f}"

    best: MemoryPlan | None = None
    text_modes = {"resident": ("resident",), "streamed": ("streamed",)}.get(text_encoder, ("resident", "streamed"))
    for tiling in tiling_choices:
        # Captioning generates token by token: streaming the 7B model per token would take minutes.
        for text_mode in ("resident",) if job.caption else text_modes:
            for slots in (3, 2):
                for encode_tiling in (False, True) if vae_tiling != "off" else (False,):
                    lowest = build(0, slots, text_mode, tiling, encode_tiling)
                    if lowest.predicted_peak_bytes > target:
                        continue
                    room = target - lowest.predicted_peak_bytes + slots * sizes.block_bytes
                    resident = 0 if mode == "blocks" else min(sizes.blocks, room // sizes.block_bytes)
                    plan = build(resident, slots, text_mode, tiling, encode_tiling)
                    while plan.predicted_peak_bytes > target and resident > 0:
                        resident -= 1
                        plan = build(resident, slots, text_mode, tiling, encode_tiling)
                    if best is None or _better(plan, best):
                        best = plan
                    break  # untiled encoding fits: never tile it (tiles change the reference latents)
    if best is None:
        smallest = build(0, 2, "streamed", True).predicted_peak_bytes
        if job.caption:
            with_caption = build(0, 2, "resident", True).predicted_peak_bytes
            raise QwenFitError(
                f"auto-captioning needs the 7B text encoder resident: at least {budget_for(with_caption)} GiB "
                f"of VRAM, the budget is {budget_bytes / GIB:.1f} GiB. Type a prompt describing the image "
                f"(then {budget_for(smallest)} GiB suffice), or pick a larger VRAM budget."
            )
        raise QwenFitError(
            f"this job ({job.describe()}) needs at least {budget_for(smallest)} GiB of VRAM with every "
            f"block streamed; the budget is {budget_bytes / GIB:.1f} GiB. Pick a larger VRAM budget, or lower "
            "the output size, the number of layers or references."
        )
    return best


def _preference(plan: MemoryPlan) -> tuple:
    """More resident blocks first (less streaming); then a resident text encoder; then no VAE tiling."""
    return (
        len(plan.resident_blocks),
        plan.text_encoder == "resident",
        not plan.vae_encode_tiling,
        not plan.vae_tiling,
        plan.slots,
    )


def _better(a: MemoryPlan, b: MemoryPlan) -> bool:
    return _preference(a) > _preference(b)


def describe_memory_plan(plan: MemoryPlan, sizes: ModelSizes) -> str:
    """Lines for logs and node reports."""
    budget = "no limit" if plan.budget_bytes is None else f"{plan.budget_bytes / GIB:.1f} GiB"
    lines = [
        f"  job: {plan.job}; VRAM budget {budget}",
        f"  transformer: {len(plan.resident_blocks)} of {sizes.blocks} blocks resident, "
        f"{len(plan.streamed_blocks)} streamed through {plan.slots} GPU slots "
        f"({sizes.block_bytes / MIB:.0f} MiB per block)",
        f"  modulation: {plan.modulation} ({sizes.modulation_bytes / GIB:.2f} GiB of weights kept on the host)",
        f"  text encoder: {plan.text_encoder}; CFG: {plan.cfg}; VAE tiling: encode "
        f"{'on' if plan.vae_encode_tiling else 'off'}, decode {'on' if plan.vae_tiling else 'off'}; "
        f"slicing {'on' if plan.vae_slicing else 'off'}",
        "  predicted peak: "
        + ", ".join(f"{name} {peak / GIB:.2f}" for name, peak in plan.phase_peaks)
        + f" GiB (max {plan.predicted_peak_bytes / GIB:.2f} GiB); pinned host {plan.pinned_bytes / GIB:.2f} GiB",
    ]
    if len(plan.devices) > 1:
        lines.append(f"  GPUs: {plan.strategy}; " + "; ".join(_device_line(plan, i) for i in range(len(plan.devices))))
    lines.extend(f"  note: {n}" for n in plan.notes)
    return "\n".join(lines)


def _device_line(plan: MemoryPlan, index: int) -> str:
    """What one GPU of a multi-GPU plan holds, and its predicted peak."""
    device = plan.devices[index]
    held = []
    if index == 0:
        held.append("text encoder, VAE, small parts")
    blocks = [b for b, d in zip(plan.resident_blocks, plan.block_devices, strict=False) if d == index]
    if blocks:
        held.append(f"blocks {blocks[0]}-{blocks[-1]}")
    if index == 0 and plan.streamed_blocks:
        held.append(f"ring for blocks {plan.streamed_blocks[0]}-{plan.streamed_blocks[-1]}")
    if device == plan.replica_device:
        held.append("a replica of every block (negative prompt)")
    peak = dict(plan.device_peaks).get(device, 0)
    return f"{device} holds {', '.join(held)} (predicted peak {peak / GIB:.2f} GiB)"
