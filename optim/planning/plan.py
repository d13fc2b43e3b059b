"""The plan of one run: one value that says where every weight lives, in what format, what streams,
what arithmetic runs, and what peak (and, when a device speed is known, s/step) it predicts.

Made by the one planner (optim/planning/planner.py) for 1..N GPUs, with one of four strategies (one GPU,
block split, CFG-parallel, sequence-parallel) and the reason it was chosen; printed by ``Plan.describe``;
shown by the plan preview; carried by the run record and compared there with what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from .host_memory import HostMemory
from .model_sizes import ModelSizes
from .speed_ladder import EXACT, Arithmetic

GIB = 1024**3
MIB = 1024**2
# How the GPUs share the work: one GPU; blocks spread over GPUs run one after the other; each GPU computes
# one sample of the CFG pair.
ONE_GPU, SPLIT, CFG_PARALLEL = "one GPU", "block split", "CFG-parallel"
# Every GPU runs every block on its share of the image tokens (optim/execution/sequence_parallel.py).
SEQUENCE_PARALLEL = "sequence-parallel"
# diffusers' own whole-component offload: the planner places nothing and predicts no peak.
WHOLE_MODEL_OFFLOAD = "whole-model offload"


@dataclass(frozen=True)
class ComponentPlacement:
    """One pipeline component: its size, storage format and compute dtype, and where it waits and runs."""

    name: str
    parameters: int
    dtype: str  # storage formats and compute dtype ("fp8+bf16": fp8 weights expanded to bf16)
    bytes: int
    home: str  # where it waits between uses ("cuda:0", "cpu", "pinned cpu")
    runs_on: str  # where it computes
    residency: str  # "resident", "offloaded (whole)", "planned per run (resident or streamed)"


@dataclass(frozen=True)
class LoraLine:
    """One LoRA of the run's stack, as the plan shows it."""

    name: str
    strength: float
    rank: int
    nbytes: int  # its factors on each GPU, in the compute dtype


@dataclass(frozen=True)
class LoraPlan:
    """The run's LoRAs: their factors stay on every GPU the plan uses, next to one merged copy of the
    largest layer they change (optim/quant/low_rank.py merges into a dense weight when that is cheaper)."""

    lines: tuple[LoraLine, ...] = ()
    workspace_bytes: int = 0

    @property
    def resident_bytes(self) -> int:
        """Bytes the LoRAs add on each GPU the plan uses."""
        return sum(line.nbytes for line in self.lines) + self.workspace_bytes if self.lines else 0

    def describe(self) -> str:
        loras = ", ".join(
            f"{line.name} x{line.strength:g} (rank {line.rank}, {line.nbytes / MIB:.0f} MiB)" for line in self.lines
        )
        return f"LoRAs: {loras}; applied as each layer runs, {self.resident_bytes / MIB:.0f} MiB on each GPU"


NO_LORA_PLAN = LoraPlan()


@dataclass(frozen=True)
class Plan:
    """Everything decided for one run of one job.

    Host memory and the components are fixed at load time; the rest is decided per job. ``devices`` are
    the GPUs the plan uses, the pipeline's own first (empty: that one GPU alone), and ``strategy`` says how
    they share the work:

    - one GPU / block split: ``resident_blocks`` stay on ``devices[block_devices[i]]`` (the first GPU
      when ``block_devices`` is empty), the ``streamed_blocks`` stream through ``slots`` ring slots on
      the first GPU; the blocks run one GPU after the other.
    - CFG-parallel: ``devices`` = (first GPU, ``replica_device``); the first computes the prompt's sample,
      the replica the negative prompt's. ``device_resident[i]`` leading blocks stay on ``devices[i]``, and
      every GPU that does not hold them all streams the rest through its own ring of ``slots`` slots.
    - sequence-parallel: every GPU of ``devices`` runs every block on ``head_shares[i]`` heads and as
      large a share of the image tokens; residency and rings as for CFG-parallel.

    For the last two, ``resident_blocks``/``streamed_blocks`` are the first GPU's and ``block_devices`` is
    empty; ``slots`` is 0 only when every GPU holds every block. Every ring reads the one page-locked host
    arena, so ``pinned_bytes`` does not grow with the GPUs. ``phase_peaks`` are the first GPU's,
    ``device_peaks`` every GPU's. ``predicted_peak_bytes`` is None only for whole-model offload.
    """

    job: str
    sizes: ModelSizes
    budget_bytes: int | None
    host: HostMemory | None
    components: tuple[ComponentPlacement, ...]
    strategy: str  # ONE_GPU, SPLIT, CFG_PARALLEL, SEQUENCE_PARALLEL or WHOLE_MODEL_OFFLOAD
    resident_blocks: tuple[int, ...]
    streamed_blocks: tuple[int, ...]
    slots: int
    modulation: str  # "precomputed" (weights on the host) or "in blocks"
    text_encoder: str  # "resident" or "streamed"
    vae_tiling: bool  # decoding
    vae_encode_tiling: bool  # encoding the references: tiled only when untiled does not fit (tiles change latents)
    vae_slicing: bool
    cfg: str  # "interleaved", "batched", "two_calls", "CFG-parallel" or "off"
    phase_peaks: tuple[tuple[str, int], ...]
    predicted_peak_bytes: int | None
    pinned_bytes: int
    devices: tuple[str, ...] = ()  # the GPUs the plan uses, the pipeline's own first
    block_devices: tuple[int, ...] = ()  # block split: per resident block, its GPU (index into devices)
    replica_device: str | None = None  # CFG-parallel: the GPU computing the negative prompt
    device_peaks: tuple[tuple[str, int], ...] = ()  # predicted peak per GPU
    seconds_per_step: float | None = None  # set where a device speed is known (the plan preview)
    notes: tuple[str, ...] = ()
    arithmetic: Arithmetic = EXACT  # the speed rung: what the blocks multiply in, and the step cache
    loras: LoraPlan = NO_LORA_PLAN  # the LoRA stack applied at run time (its bytes are in every peak)
    reason: str = ""  # why this strategy, and its predicted step against one GPU (strategy_choice.py)
    # CFG-parallel and sequence-parallel: per GPU of ``devices``, how many leading blocks stay resident there
    # (they differ with the GPUs' budgets); a GPU holding fewer than all streams the others through its own
    # ring of ``slots`` slots from the one shared host arena.
    device_resident: tuple[int, ...] = ()
    # Sequence-parallel: attention heads per GPU of ``devices`` (in proportion to their speeds); the image
    # tokens are cut in the same proportion (optim/planning/work_split.py).
    head_shares: tuple[int, ...] = ()

    @property
    def places_weights(self) -> bool:
        """False for whole-model offload, where diffusers moves whole components."""
        return self.strategy != WHOLE_MODEL_OFFLOAD

    def describe(self) -> str:
        """The plan in lines, for logs, node reports and the preview: the one printer of a plan."""
        lines = [f"QwenFit plan for {self.job}:"]
        lines += [
            f"  {c.name:<13} {c.parameters / 1e6:9.1f} M params  {c.dtype:<14} {c.bytes / GIB:7.2f} GiB  "
            f"home {c.home:<10} {c.residency}"
            for c in self.components
        ]
        sizes = self.sizes
        budget = "no limit" if self.budget_bytes is None else f"{self.budget_bytes / GIB:.1f} GiB"
        vae = (
            f"VAE tiling: encode {_on(self.vae_encode_tiling)}, decode {_on(self.vae_tiling)}; "
            f"slicing {_on(self.vae_slicing)}"
        )
        # CFG-parallel and sequence-parallel: the first GPU's blocks here, every GPU's in its own line.
        first = " on the first GPU" if self.strategy in (CFG_PARALLEL, SEQUENCE_PARALLEL) else ""
        if not self.places_weights:
            lines += [
                f"  weights: {WHOLE_MODEL_OFFLOAD} (diffusers moves each component to the GPU as it runs); "
                "no peak predicted",
                f"  CFG: {self.cfg}; {vae}",
            ]
        else:
            lines += [
                f"  VRAM budget {budget}; GPUs: {self.strategy}" + (f" ({self.reason})" if self.reason else ""),
                f"  transformer: {len(self.resident_blocks)} of {sizes.blocks} blocks resident{first}, "
                f"{len(self.streamed_blocks)} streamed through {self.slots} GPU slots "
                f"({sizes.block_bytes / MIB:.0f} MiB per block)",
                f"  modulation: {self.modulation} ({sizes.modulation_bytes / GIB:.2f} GiB of weights kept on the host)",
                f"  text encoder: {self.text_encoder}; CFG: {self.cfg}; {vae}",
                "  predicted peak: "
                + ", ".join(f"{name} {peak / GIB:.2f}" for name, peak in self.phase_peaks)
                + f" GiB (max {self.predicted_peak_bytes / GIB:.2f} GiB); pinned host {self.pinned_bytes / GIB:.2f} GiB",
            ]
            if len(self.devices) > 1:
                lines += [f"  {self._device_line(i)}" for i in range(len(self.devices))]
        lines.append(f"  {self.arithmetic.describe()}")
        if self.loras.lines:
            lines.append(f"  {self.loras.describe()}")
        if self.seconds_per_step is not None:
            lines.append(f"  predicted step: {self.seconds_per_step:.2f} s")
        if self.host is not None:
            lines += self.host.describe_lines()
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _device_line(self, index: int) -> str:
        """What one GPU of a multi-GPU plan holds and computes, and its predicted peak."""
        device = self.devices[index]
        held = ["text encoder, VAE, small parts"] if index == 0 else []
        computes = ""
        if self.strategy in (CFG_PARALLEL, SEQUENCE_PARALLEL):
            resident, blocks = self.device_resident[index], self.sizes.blocks
            if self.strategy == SEQUENCE_PARALLEL and index:
                held.append("small parts")
            if resident:
                held.append(f"blocks 0-{resident - 1}")
            if resident < blocks:
                held.append(f"its own {self.slots}-slot ring for blocks {resident}-{blocks - 1}")
            if self.strategy == CFG_PARALLEL:
                computes = "the negative prompt's sample" if device == self.replica_device else "the prompt's sample"
            else:
                computes = (
                    f"{self.head_shares[index]} of {sum(self.head_shares)} heads and that share of the image tokens"
                )
        else:
            blocks = [b for b, d in zip(self.resident_blocks, self.block_devices, strict=False) if d == index]
            if blocks:
                held.append(f"blocks {blocks[0]}-{blocks[-1]}")
            if index == 0 and self.streamed_blocks:
                held.append(f"ring for blocks {self.streamed_blocks[0]}-{self.streamed_blocks[-1]}")
        peak = dict(self.device_peaks).get(device, 0)
        line = f"{device} holds {', '.join(held)}" + (f"; computes {computes}" if computes else "")
        return f"{line} (predicted peak {peak / GIB:.2f} GiB)"


def _on(flag: bool) -> str:
    return "on" if flag else "off"
