"""Host RAM: which weights wait in memory between uses, and which are read again from the files.

The text encoder runs once per new prompt and the modulation layers once per new schedule: when the
host budget cannot hold everything, they stay in the model files first and are read at each use
(prompt embeddings and modulation rows are cached, so a new seed reads nothing). The transformer's
blocks run every step; when even they do not fit (a 16 GB machine), the first blocks stay in the files
and are read at every step through a ring of page-locked staging buffers that reads ahead of the GPU.
The first ones, because the GPU keeps the first blocks resident (optim/planning/planner.py): those are
read once when placed, and only the blocks between the GPU's and the host's share are read per step.
Decided before loading, from the files' headers, so a short host never holds them even while loading:
``plan_host_memory_for`` makes the plan for a load request (the loader and the plan preview both ask it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psutil

from ..errors import QwenFitError
from ..files.safetensors_file import TensorInfo
from ..files.sources import SourceDescription
from ..files.weight_source import WeightSource
from ..quant.format_registry import format_for, kept_as_stored, quantized_on_load
from ..quant.fp8_scope import FP8_ALL, FP8_AS_STORED, FP8_NONE
from ..qwen.anatomy import (
    TRANSFORMER_BLOCKS,
    is_language_block_linear,
    is_modulation_key,
    is_text_unit_key,
    is_transformer_block_key,
)
from ..settings import FP8, GIB, HOST_BUDGETS, HOST_SIZES
from .load_request import LoadRequest, compute_dtypes, fp8_modes
from .speed_ladder import Arithmetic

# Python, torch, the CUDA context, ComfyUI itself and image buffers.
RUNTIME_BYTES = 3 * GIB
# The share of a machine's RAM the plan may keep: the rest is the OS's, the browser's and the page cache's
# (which the blocks read from the files come through). A 16 GB machine (about 15.5 GiB visible) gets 9.7 GiB.
RAM_SHARE = 0.625
# Page-locked staging buffers, each one block, for blocks read from the files at every step: the reads run
# this many blocks ahead of the GPU's copies, so a slow read is absorbed by the ones already in.
READ_AHEAD = 4
MEMORY, FILES = "memory", "files"


@dataclass(frozen=True)
class HostWeights:
    """Host bytes of the weights as the plan stores them, estimated from the files' headers."""

    transformer: int  # everything of the transformer, modulation included
    modulation: int
    text_encoder: int  # everything of the text encoder, units included
    text_units: int  # vision blocks and language layers (what can stay in the files)
    vae: int
    text_encoder_can_stay_in_files: bool  # stored form = planned form (no quantizing or LoRA on load)
    modulation_can_stay_in_files: bool
    blocks: int = 0  # the transformer blocks without their modulation layers (what streams every step)
    block_count: int = 60
    blocks_can_stay_in_files: bool = False


@dataclass(frozen=True)
class HostMemory:
    """Where the once-per-run weights wait, and the host memory predicted (part of the run's Plan)."""

    budget_bytes: int | None
    text_encoder: str  # MEMORY or FILES
    modulation: str
    predicted_bytes: int  # RSS + page-locked after loading
    notes: tuple[str, ...] = ()
    blocks_in_files: int = 0  # the first this many transformer blocks are read from the files at every step
    read_ahead: int = 0  # page-locked staging buffers for them

    def describe_lines(self) -> list[str]:
        budget = "no limit" if self.budget_bytes is None else f"{self.budget_bytes / GIB:.1f} GiB"
        where = {MEMORY: "kept in host memory", FILES: "read from the model files at each use"}
        lines = [
            f"  host RAM: budget {budget}, predicted {self.predicted_bytes / GIB:.1f} GiB",
            f"  text encoder units: {where[self.text_encoder]}; modulation weights: {where[self.modulation]}",
        ]
        if self.blocks_in_files:
            lines.append(
                f"  transformer blocks 0-{self.blocks_in_files - 1}: read from the model files when used "
                f"({self.read_ahead} blocks ahead; those the GPU keeps are read once), the rest kept in host memory"
            )
        return [*lines, *(f"  note: {n}" for n in self.notes)]


def host_budget_bytes(choice: str) -> int | None:
    """Bytes of host RAM the plan may keep; None means no limit, 0 means as little as possible."""
    if choice not in HOST_BUDGETS:
        raise QwenFitError(f"host RAM budget {choice!r} is not supported; pick one of {', '.join(HOST_BUDGETS)}.")
    if choice == "unlimited":
        return None
    if choice == "minimal":
        return 0
    if choice == "auto":
        return int(psutil.virtual_memory().total * RAM_SHARE)
    # A named size is the machine's RAM (what users know of their PC), planned as "auto" would there.
    return int(HOST_SIZES[choice] * GIB * RAM_SHARE)


def plan_host(weights: HostWeights, budget_bytes: int | None) -> HostMemory:
    """Keep everything in memory if it fits ``budget_bytes``; otherwise leave the text encoder's
    units, then the modulation layers, then as many of the first transformer blocks as needed in the
    files (each when its stored form is the planned form)."""
    need = RUNTIME_BYTES + weights.transformer + weights.text_encoder + weights.vae
    text, modulation, in_files, read_ahead = MEMORY, MEMORY, 0, 0
    notes: list[str] = []
    if budget_bytes is not None and need > budget_bytes and weights.text_encoder_can_stay_in_files:
        text, need = FILES, need - weights.text_units
    if budget_bytes is not None and need > budget_bytes and weights.modulation_can_stay_in_files:
        modulation, need = FILES, need - weights.modulation
    if budget_bytes is not None and need > budget_bytes and weights.blocks_can_stay_in_files and weights.blocks:
        block = -(-weights.blocks // weights.block_count)
        read_ahead = READ_AHEAD
        need += read_ahead * block
        in_files = min(weights.block_count, -(-(need - budget_bytes) // block))
        need -= in_files * block
    if text == FILES:
        notes.append("a new prompt reads the text encoder from disk (the same prompt again reads nothing)")
    if in_files:
        notes.append(
            f"{in_files} of {weights.block_count} transformer blocks are read from the model files: each step "
            "reads those the GPU does not keep, fast while the files sit in the page cache, at disk speed otherwise"
        )
    if budget_bytes and need > budget_bytes:
        notes.append(
            f"the weights need about {need / GIB:.1f} GiB of host RAM, more than the budget of "
            f"{budget_bytes / GIB:.1f} GiB: the system may swap. fp8 files or a int8/nf4 precision need less."
        )
    return HostMemory(budget_bytes, text, modulation, need, tuple(notes), in_files, read_ahead)


def _planned_bytes(
    info: TensorInfo, stored_fp8: bool, fp8_mode: str, kind: str, linear: bool, compute_bytes: int
) -> float:
    """Host bytes per element of one stored tensor once loaded as planned."""
    fp8 = format_for(FP8)
    if stored_fp8 and fp8_mode != FP8_NONE:
        return fp8.host_bytes_per_weight
    if linear and len(info.shape) == 2:
        if (on_load := quantized_on_load(kind)) is not None:
            return on_load.host_bytes_per_weight
        if fp8_mode == FP8_ALL:
            return fp8.host_bytes_per_weight
    return compute_bytes


def estimate_component(
    source: WeightSource,
    fp8_mode: str,
    kind: str,
    linear_scope: Callable[[str], bool],
    compute_bytes: int,
    parts: dict[str, Callable[[str], bool]],
) -> dict[str, int]:
    """Planned host bytes of a component's tensors, split by ``parts`` (name -> key predicate);
    ``"all"`` is the whole component."""
    totals = {"all": 0, **{name: 0 for name in parts}}
    for file in source.files:
        for key, info in file.tensors.items():
            numel = info.nbytes // info.dtype.itemsize
            linear = key.endswith(".weight") and linear_scope(key)
            if kept_as_stored(source, key, info):  # a format the files decide (optim/quant/format_registry.py)
                size = info.nbytes
            else:
                size = int(numel * _planned_bytes(info, source.stores_fp8(key), fp8_mode, kind, linear, compute_bytes))
            totals["all"] += size
            for name, belongs in parts.items():
                if belongs(key):
                    totals[name] += size
    return totals


def _stays_in_files(kind: str, fp8: str) -> bool:
    """A component's weights can be read back from its files when the plan stores them as the files
    do (or as a plain cast): not when they are quantized on load."""
    return quantized_on_load(kind) is None and fp8 in (FP8_NONE, FP8_AS_STORED)


def deferred_parts(request: LoadRequest, arithmetic: Arithmetic) -> dict[str, bool]:
    """Per component: may its streamed weights (transformer blocks, text-encoder units) stay in the files
    at load? The engine then reads them into host memory in the background, or at each use when the host
    plan says so. Not for diffusers' whole-model offload (it moves modules the engine never sees), nor
    for weights quantized on load (there is nothing on disk to read back)."""
    engine_places = request.offload.mode != "model"
    transformer = request.precision.transformer if arithmetic.store_as is None else arithmetic.store_as
    return {
        "transformer": engine_places and quantized_on_load(transformer) is None,
        "text_encoder": engine_places and quantized_on_load(request.precision.text_encoder) is None,
    }


def plan_host_memory_for(request: LoadRequest, desc: SourceDescription, arithmetic: Arithmetic) -> HostMemory:
    """Which weights wait in host memory and which are read from the files when used, estimated from the
    files' headers (the loader and the plan preview both ask here)."""
    precision = request.precision
    dtypes, fp8 = compute_dtypes(request), fp8_modes(request, desc)
    transformer = estimate_component(
        desc.transformer,
        fp8["transformer"],
        precision.transformer,
        is_transformer_block_key,
        dtypes["transformer"].itemsize,
        {"modulation": is_modulation_key, "blocks": _streamed_block_key},
    )
    text = estimate_component(
        desc.text_encoder,
        fp8["text_encoder"],
        precision.text_encoder,
        is_language_block_linear,
        dtypes["text_encoder"].itemsize,
        {"units": is_text_unit_key},
    )
    engine_places = request.offload.mode != "model"  # diffusers' own offload moves whole modules
    weights = HostWeights(
        transformer=transformer["all"],
        modulation=transformer["modulation"],
        text_encoder=text["all"],
        text_units=text["units"],
        vae=desc.vae.nbytes,
        text_encoder_can_stay_in_files=engine_places and _stays_in_files(precision.text_encoder, fp8["text_encoder"]),
        modulation_can_stay_in_files=engine_places and _stays_in_files(precision.transformer, fp8["transformer"]),
        blocks=transformer["blocks"],
        block_count=_block_count(desc.transformer),
        # Read at every step: only where the whole stack is read as stored (never quantized on load).
        blocks_can_stay_in_files=deferred_parts(request, arithmetic)["transformer"]
        and _stays_in_files(precision.transformer, fp8["transformer"]),
    )
    return plan_host(weights, host_budget_bytes(request.offload.host_budget))


def _block_count(source: WeightSource) -> int:
    """How many transformer blocks the files hold, from their keys (``...transformer_blocks.N.…``)."""
    numbers = {
        key.split(TRANSFORMER_BLOCKS, 1)[1].split(".", 1)[0]
        for file in source.files
        for key in file.tensors
        if is_transformer_block_key(key)
    }
    return max(1, len(numbers))


def _streamed_block_key(key: str) -> bool:
    """A key of what streams every step: a transformer block's tensor other than its modulation layers."""
    return is_transformer_block_key(key) and not is_modulation_key(key)
