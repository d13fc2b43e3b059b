"""The planner: for a job, the settings and the GPUs' budgets, the one Plan of the run.

Pure: model sizes + settings + job + budgets -> a frozen Plan; no CUDA calls, nothing moves.

Weights are known exactly (measured from the modules, or from the files' headers). Activations are
modelled per phase with coefficients measured on an H200 (bench/results/), so the prediction covers
the whole generation:

- ``encode``: the text encoder (resident, or streamed unit by unit) and the VAE encoding the references;
- ``denoise``: resident blocks, the streaming ring, the modulation table and the activations of one
  block for all samples of the CFG pass;
- ``decode``: the VAE, tiled when the untiled decode would not fit.

The first GPU (the pipeline's own) holds the VAE, the text encoder and the transformer's small parts;
other GPUs hold transformer blocks only. Blocks are placed by one of these strategies:

- **one GPU / block split**: as many blocks resident as the GPUs' budgets hold, in contiguous runs
  (all on one GPU when one holds them: no hops), the faster GPUs (``Gpu.speed``) filled first; the
  rest stream through a ring on the first GPU;
- **CFG-parallel** (two or more GPUs, CFG on): every block resident on the first GPU and a replica on
  another; the prompt's sample computes on one, the negative prompt's on the other;
- **sequence-parallel** (two or more GPUs, CFG off; only when ``plan_run`` is asked with
  ``sequence_parallel=True``, which the engine will pass once it runs it): every GPU runs every block
  on its share of the image tokens, the same blocks resident on each and the rest streamed through
  each GPU's own ring from the shared host arenas. It replaces the best other plan when its predicted
  relative step (``relative_step``) is at least 10% shorter.

Every candidate (strategy x VAE decode tiling x text encoder mode x ring slots, each with reference
encoding untiled whenever that fits) is kept and the best by ``preference`` wins: the fewest streamed
blocks, then CFG-parallel, a resident text encoder, no encode tiling, no decode tiling, fewer GPUs,
more ring slots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..errors import QwenFitError
from ..qwen.job_shape import JobShape
from ..settings import GIB, OffloadSettings, VaeSettings
from .host_memory import FILES, HostMemory
from .model_sizes import ModelSizes
from .plan import (
    CFG_PARALLEL,
    NO_LORA_PLAN,
    ONE_GPU,
    SEQUENCE_PARALLEL,
    SPLIT,
    WHOLE_MODEL_OFFLOAD,
    ComponentPlacement,
    LoraPlan,
    Plan,
)
from .speed_ladder import EXACT, Arithmetic

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
# Ring slots tried when blocks stream (0: nothing streams).
SLOT_CHOICES = (0, 3, 2)
# Qwen-Image's attention heads are 128 wide in every variant; sequence parallelism splits the heads evenly.
HEAD_DIM = 128
# Assumed until measured on GPUs: streaming every block over one GPU's PCIe link takes about as long as
# that GPU computing one step. Only the choice of sequence parallelism over the other strategies reads it.
STREAM_TO_COMPUTE = 1.0
# Sequence parallelism replaces another plan only when it predicts a step at least 10% shorter: below
# that, its all-to-alls and the model's error eat the gain.
SEQUENCE_GAIN = 0.9


@dataclass(frozen=True)
class Gpu:
    """One device the plan may use: its torch name and the bytes the plan may take on it (None: no limit)."""

    device: str
    budget_bytes: int | None
    capability: tuple[int, int] | None = None  # CUDA compute capability; None: the CPU (or not known)
    # Relative compute speed (any unit, the same for every GPU of a run): a block split puts its blocks
    # on the faster GPUs first. 1.0 for all: the GPUs in their order (the first preferred: no hops).
    speed: float = 1.0


Phases = tuple[tuple[str, int], ...]


def denoise_activations(sizes: ModelSizes, job: JobShape, k: Coefficients, cfg: str = "batched") -> int:
    """Live activations of one block. Batched CFG computes every sample at once. Interleaved CFG
    computes one sample at a time, but measured (H200, 2026-11-22) it peaks as high: the 8 GB plan
    modelled at half the activations ran 12% over its prediction, so it is planned like batched.
    Two calls (and each GPU of CFG-parallel) hold one sample's activations."""
    samples = 1 if cfg == "two_calls" else job.samples
    return int(samples * (job.image_tokens + job.text_tokens) * sizes.hidden * k.block_activation_per_token_unit)


def modulation_table_bytes(sizes: ModelSizes, job: JobShape) -> int:
    # Per step and block: img (up to 2 rows for 2511) + txt rows of 6 * hidden, bf16.
    return job.steps * sizes.blocks * 3 * 6 * sizes.hidden * 2


def vae_choices(vae: VaeSettings, job: JobShape) -> tuple[tuple[bool, ...], tuple[bool, ...], bool]:
    """(decode tiling choices, encode tiling choices, slicing): the one place VAE switches are read.
    "auto" tiling lets the planner tile only what does not fit; slicing "auto" is on for Layered (it
    decodes every layer in one batch)."""
    decode = {"on": (True,), "off": (False,)}.get(vae.tiling, (False, True))
    encode = (False,) if vae.tiling == "off" else (False, True)
    slicing = vae.slicing == "on" or (vae.slicing == "auto" and job.kind == "layered")
    return decode, encode, slicing


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
) -> Phases:
    """(phase, peak bytes) on the first GPU: the transformer's small parts, the VAE and the text
    encoder (resident, or streamed while encoding), ``block_weights`` of resident blocks and, while
    denoising, the streaming ring and one block's transient memory."""
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


def _secondary_phases(k: Coefficients, block_weights: int, denoise_transient: int) -> Phases:
    """A GPU that only holds blocks: their weights, and one block's transient memory while denoising."""
    base = k.fixed + block_weights
    return (("encode", base), ("denoise", base + denoise_transient), ("decode", base))


def _peak(phases: Phases) -> int:
    return max(p for _, p in phases)


def pinned_host_bytes(sizes: ModelSizes, text_mode: str, host: HostMemory | None) -> int:
    """Page-locked host memory: the engine keeps every block and text unit in its arenas (a re-plan
    only copies); weights read from the files need only their staging buffers."""
    text_pinned = sizes.text_units_bytes
    if host is not None and host.text_encoder == FILES:
        text_pinned = 2 * sizes.text_unit_bytes if text_mode == "streamed" else 0
    modulation_pinned = sizes.modulation_bytes
    if host is not None and host.modulation == FILES:
        modulation_pinned = 2 * sizes.modulation_bytes // sizes.blocks
    in_files = 0 if host is None else min(host.blocks_in_files, sizes.blocks)
    staging = host.read_ahead if host is not None and in_files else 0
    return (sizes.blocks - in_files + staging) * sizes.block_bytes + text_pinned + modulation_pinned


def _split_counts(rooms: list[int], blocks: int, speeds: Sequence[float] = ()) -> list[int]:
    """Blocks per GPU. The blocks of a split run one GPU after the other, so a step takes the sum of
    each GPU's blocks over its speed: the fastest GPU that holds them all takes them all, else the GPUs
    fill fastest first; equal speeds keep the GPUs' order (the first preferred: no hops)."""
    order = sorted(range(len(rooms)), key=lambda i: -speeds[i]) if speeds else list(range(len(rooms)))
    for index in order:
        if rooms[index] >= blocks:
            return [blocks if i == index else 0 for i in range(len(rooms))]
    counts, left = [0] * len(rooms), blocks
    for index in order:
        counts[index] = max(0, min(rooms[index], left))
        left -= counts[index]
    return counts


def relative_step(plan: Plan) -> float:
    """A step's time relative to one GPU computing it with every block resident: the larger of the
    GPU's share of the compute and its streaming (a copy stream runs ahead of the compute). Used to
    weigh sequence parallelism (compute / GPUs, each GPU streaming on its own link) against the rest."""
    share = 1 / len(plan.devices) if plan.strategy == SEQUENCE_PARALLEL else 1.0
    return max(share, STREAM_TO_COMPUTE * len(plan.streamed_blocks) / plan.sizes.blocks)


def preference(plan: Plan) -> tuple:
    """The one order candidates are compared by (larger is better)."""
    return (
        len(plan.resident_blocks),
        plan.strategy == CFG_PARALLEL,
        plan.text_encoder == "resident",
        not plan.vae_encode_tiling,
        not plan.vae_tiling,
        -len(plan.devices),
        plan.slots,
    )


def plan_run(
    sizes: ModelSizes,
    job: JobShape,
    offload: OffloadSettings,
    vae: VaeSettings,
    gpus: Sequence[Gpu],
    host: HostMemory | None = None,
    components: tuple[ComponentPlacement, ...] = (),
    notes: tuple[str, ...] = (),
    coefficients: Coefficients = COEFFICIENTS,
    arithmetic: Arithmetic = EXACT,
    loras: LoraPlan = NO_LORA_PLAN,
    sequence_parallel: bool = False,
) -> Plan:
    """The plan of ``job`` under the user's ``offload`` and ``vae`` settings over ``gpus`` (the
    pipeline's own device first, each with its budget; one entry for one GPU or the CPU).

    ``host`` says which weights are read from the model files at each use (only their staging
    buffers are then page-locked); ``components`` and ``notes`` (load-time facts) are carried into
    the plan, and so is ``arithmetic`` (the speed rung, chosen at load by
    optim/planning/speed_ladder.py). The factors of ``loras`` (the run's LoRA stack) stay on every GPU
    the plan uses, so they count there like the fixed bytes. ``sequence_parallel`` lets a CFG-off job
    on several GPUs split its image tokens over them (off until the engine runs it: the plan preview
    and the tests ask for it). Raises QwenFitError naming the fix when nothing fits, or when
    CFG-parallel was asked for and cannot run.
    """
    if not gpus:
        raise ValueError("plan_run needs at least one device")
    if loras.lines:
        coefficients = replace(coefficients, fixed=coefficients.fixed + loras.resident_bytes)
    search = _Search(sizes, job, offload, vae, tuple(gpus), host, components, notes, coefficients, sequence_parallel)
    plan = search.whole_model_offload() if offload.mode == "model" else search.best()
    return replace(plan, arithmetic=arithmetic, loras=loras)


class _Search:
    """One search over the candidates of one job (the state plan_run's helpers share)."""

    def __init__(
        self,
        sizes: ModelSizes,
        job: JobShape,
        offload: OffloadSettings,
        vae: VaeSettings,
        gpus: tuple[Gpu, ...],
        host: HostMemory | None,
        components: tuple[ComponentPlacement, ...],
        notes: tuple[str, ...],
        k: Coefficients,
        sequence_parallel: bool = False,
    ) -> None:
        self.sizes, self.job, self.offload, self.gpus, self.host, self.k = sizes, job, offload, gpus, host, k
        self.sequence_parallel = sequence_parallel
        self.components, self.notes = components, notes
        self.decode_choices, self.encode_choices, self.slicing = vae_choices(vae, job)
        self.text_choices = ("resident",) if job.caption else ("resident", "streamed")
        self.table = modulation_table_bytes(sizes, job) + sizes.dequant_workspace_bytes
        # "none" keeps every block resident: on one GPU the budget is not checked (the user asked for it).
        self.unchecked = offload.mode == "none" and len(gpus) == 1

    def transient(self, cfg: str) -> tuple[int, int]:
        """(denoise transient bytes, fragmentation margin) for this CFG pass."""
        activations = denoise_activations(self.sizes, self.job, self.k, cfg)
        return activations + self.table, int(self.k.fragmentation_margin * activations)

    def target(self, gpu: Gpu, margin: int) -> float:
        if gpu.budget_bytes is None or self.unchecked:
            return math.inf
        return gpu.budget_bytes * SAFETY - margin

    def record(
        self,
        strategy: str,
        counts: list[int],
        slots: int,
        text_mode: str,
        vae: tuple[bool, bool],
        cfg: str,
        peaks: list[Phases],
        used: list[int],
        replica: int | None,
    ) -> Plan:
        sizes, gpus = self.sizes, self.gpus
        resident = sum(counts)
        block_devices: list[int] = []
        for index, count in enumerate(counts):
            block_devices += [used.index(index)] * count if count else []
        several = len(used) > 1
        tiling, encode_tiling = vae
        return Plan(
            job=self.job.describe(),
            sizes=sizes,
            budget_bytes=gpus[0].budget_bytes,
            host=self.host,
            components=self.components,
            strategy=strategy if several else ONE_GPU,
            resident_blocks=tuple(range(resident)),
            streamed_blocks=tuple(range(resident, sizes.blocks)),
            slots=slots if resident < sizes.blocks else 0,
            modulation="precomputed",
            text_encoder=text_mode,
            vae_tiling=tiling,
            vae_encode_tiling=encode_tiling,
            vae_slicing=self.slicing,
            cfg=cfg if self.job.cfg else "off",
            phase_peaks=peaks[0],
            predicted_peak_bytes=_peak(peaks[0]),
            pinned_bytes=pinned_host_bytes(sizes, text_mode, self.host),
            devices=tuple(gpus[i].device for i in used) if several else (),
            block_devices=tuple(block_devices) if several else (),
            replica_device=gpus[replica].device if replica is not None else None,
            device_peaks=tuple((gpus[i].device, _peak(peaks[i])) for i in used) if several else (),
            notes=self.notes,
        )

    def make(
        self,
        strategy: str,
        counts: list[int],
        slots: int,
        text_mode: str,
        vae: tuple[bool, bool],
        cfg: str,
        transient: tuple[int, int],
        replica: int | None = None,
    ) -> Plan | None:
        """The plan for these block counts per GPU, or None when a GPU would exceed its budget."""
        sizes, k = self.sizes, self.k
        denoise, margin = transient
        streamed = sizes.blocks - sum(counts)
        ring = slots * sizes.block_bytes if streamed else 0
        tiling, encode_tiling = vae
        peaks = [
            primary_phases(
                sizes, self.job, k, counts[0] * sizes.block_bytes, ring, text_mode, tiling, encode_tiling, denoise
            )
        ]
        peaks += [_secondary_phases(k, count * sizes.block_bytes, denoise if count else 0) for count in counts[1:]]
        if replica is not None:
            peaks[replica] = _secondary_phases(k, sizes.blocks * sizes.block_bytes, denoise)
        used = [0] + [i for i, count in enumerate(counts) if i and count]
        if replica is not None:
            used.append(replica)
        if any(_peak(peaks[i]) > self.target(self.gpus[i], margin) for i in used):
            return None
        return self.record(strategy, counts, slots, text_mode, vae, cfg, peaks, used, replica)

    def fill(self, slots: int, text_mode: str, vae: tuple[bool, bool], transient: tuple[int, int]) -> Plan | None:
        """The block placement with ``slots`` ring slots (0: nothing streams) holding the most resident
        blocks, or None when it does not fit."""
        sizes, k, gpus = self.sizes, self.k, self.gpus
        denoise, margin = transient
        tiling, encode_tiling = vae
        ring = slots * sizes.block_bytes
        empty = primary_phases(sizes, self.job, k, 0, ring, text_mode, tiling, encode_tiling, denoise)
        rooms = [self.target(gpus[0], margin) - _peak(empty)]
        rooms += [self.target(g, margin) - _peak(_secondary_phases(k, 0, denoise)) for g in gpus[1:]]
        if rooms[0] < 0:
            return None
        fits = [sizes.blocks if r == math.inf else max(0, int(r // sizes.block_bytes)) for r in rooms]
        if self.offload.mode == "blocks":
            fits = [0] * len(gpus)
        if slots == 0 and sum(fits) < sizes.blocks:
            return None  # not everything fits resident: a ring is needed
        counts = _split_counts(fits, sizes.blocks, [g.speed for g in gpus])
        return self.make(SPLIT, counts, slots, text_mode, vae, self.offload.cfg, transient)

    def candidates(self) -> list[Plan]:
        found: list[Plan] = []
        job, offload, gpus = self.job, self.offload, self.gpus
        strategy = offload.multi_gpu if len(gpus) > 1 else "split"
        parallel_possible = len(gpus) > 1 and job.cfg and offload.cfg != "two_calls" and offload.mode != "blocks"
        if strategy in ("auto", "cfg_parallel") and parallel_possible:
            # The replica goes to the other GPU with the most room; each GPU computes one sample.
            transient = self.transient("two_calls")
            replica = max(range(1, len(gpus)), key=lambda i: self.target(gpus[i], transient[1]))
            counts = [self.sizes.blocks] + [0] * (len(gpus) - 1)
            for tiling in self.decode_choices:
                for text_mode in self.text_choices:
                    for encode_tiling in self.encode_choices:
                        plan = self.make(
                            CFG_PARALLEL,
                            counts,
                            0,
                            text_mode,
                            (tiling, encode_tiling),
                            CFG_PARALLEL,
                            transient,
                            replica,
                        )
                        if plan is not None:
                            found.append(plan)
                            break
        if strategy == "auto" and self.sequence_parallel and len(gpus) > 1 and not job.cfg:
            found += self.sequence_candidates()
        if strategy in ("auto", "split"):
            transient = self.transient(offload.cfg)
            slot_choices = (0,) if offload.mode == "none" else SLOT_CHOICES
            for tiling in self.decode_choices:
                for text_mode in self.text_choices:
                    for slots in slot_choices:
                        for encode_tiling in self.encode_choices:
                            plan = self.fill(slots, text_mode, (tiling, encode_tiling), transient)
                            if plan is not None:
                                found.append(plan)
                                break  # untiled encoding fits: never tile it (tiles change the reference latents)
        return found

    def sequence_candidates(self) -> list[Plan]:
        """Sequence-parallel plans: for each GPU count that divides the heads, the first GPU and the
        others with the most room, the best placement of each VAE and text encoder choice."""
        heads = max(1, self.sizes.hidden // HEAD_DIM)  # a model narrower than one head: no split
        others = sorted(range(1, len(self.gpus)), key=lambda i: -self.target(self.gpus[i], 0))
        slot_choices = (0,) if self.offload.mode == "none" else SLOT_CHOICES
        found = []
        for world in (w for w in range(2, len(self.gpus) + 1) if heads % w == 0):
            used = [0, *others[: world - 1]]
            for tiling in self.decode_choices:
                for text_mode in self.text_choices:
                    for slots in slot_choices:
                        for encode_tiling in self.encode_choices:
                            plan = self.sequence_fill(used, slots, text_mode, (tiling, encode_tiling))
                            if plan is not None:
                                found.append(plan)
                                break
        return found

    def sequence_fill(self, used: list[int], slots: int, text_mode: str, vae: tuple[bool, bool]) -> Plan | None:
        """Every GPU of ``used`` runs every block on 1/len(used) of the image tokens (the text on each):
        the most blocks resident on all of them with ``slots`` ring slots on each, or None."""
        sizes, job, k, gpus = self.sizes, self.job, self.k, self.gpus
        world = len(used)
        shard = -(-job.image_tokens // world)
        activations = int((job.text_tokens + shard) * sizes.hidden * k.block_activation_per_token_unit)
        denoise, margin = activations + self.table, int(k.fragmentation_margin * activations)
        tiling, encode_tiling = vae

        def phases(resident: int) -> list[Phases]:
            ring = slots * sizes.block_bytes if resident < sizes.blocks else 0
            weights = resident * sizes.block_bytes
            first = primary_phases(sizes, job, k, weights, ring, text_mode, tiling, encode_tiling, denoise)
            # Other GPUs also hold the transformer's small parts (each embeds and projects its own tokens).
            other = _secondary_phases(k, sizes.transformer_rest_bytes + weights + ring, denoise)
            return [first] + [other] * (world - 1)

        rooms = [self.target(gpus[i], margin) - _peak(p) for i, p in zip(used, phases(0), strict=True)]
        if min(rooms) < 0:
            return None
        resident = min(sizes.blocks if r == math.inf else int(r // sizes.block_bytes) for r in rooms)
        resident = 0 if self.offload.mode == "blocks" else min(resident, sizes.blocks)
        if slots == 0 and resident < sizes.blocks:
            return None  # a ring is needed
        peaks = phases(resident)
        if any(_peak(p) > self.target(gpus[i], margin) for i, p in zip(used, peaks, strict=True)):
            return None
        streamed = sizes.blocks - resident
        reason = f"CFG off: split the image tokens over {world} GPUs ({shard} of {job.image_tokens} each)"
        if streamed:
            reason += f"; each streams {streamed} blocks through its own ring"
        plan = self.record(
            SPLIT, [resident] + [0] * (len(gpus) - 1), slots, text_mode, vae, "off", [peaks[0]], [0], None
        )
        return replace(
            plan,
            strategy=SEQUENCE_PARALLEL,
            devices=tuple(gpus[i].device for i in used),
            device_peaks=tuple((gpus[i].device, _peak(p)) for i, p in zip(used, peaks, strict=True)),
            reason=reason,
        )

    def best(self) -> Plan:
        found = self.candidates()
        sequence = [p for p in found if p.strategy == SEQUENCE_PARALLEL]
        others = [p for p in found if p.strategy != SEQUENCE_PARALLEL]
        if sequence:
            chosen = max(sequence, key=lambda p: (-relative_step(p), preference(p)))
            if not others or relative_step(chosen) <= SEQUENCE_GAIN * relative_step(max(others, key=preference)):
                return chosen
        if others:
            return max(others, key=preference)
        self.refuse()
        raise AssertionError("refuse() raises")

    def refuse(self) -> None:
        """Raise the error that names the fix: CFG-parallel's reason, or the smallest workable budget."""
        sizes, job, offload, k = self.sizes, self.job, self.offload, self.k
        if offload.multi_gpu == "cfg_parallel" and len(self.gpus) > 1:
            need = sizes.blocks * sizes.block_bytes / GIB
            why = (
                "this job runs without CFG (a Lightning LoRA, or CFG scale 1)"
                if not job.cfg
                else "CFG 'two_calls' was chosen"
                if offload.cfg == "two_calls"
                else f"it needs every transformer block ({need:.1f} GiB) plus activations on each of two GPUs"
            )
            raise QwenFitError(f"CFG-parallel cannot run: {why}. Pick multi_gpu 'auto' or 'split'.")
        denoise, margin = self.transient(offload.cfg)
        budget = self.gpus[0].budget_bytes or 0

        def smallest(text_mode: str) -> str:
            """The first GPU's budget (GiB, rounded up to 0.1) with every block streamed."""
            phases = primary_phases(sizes, job, k, 0, 2 * sizes.block_bytes, text_mode, True, True, denoise)
            return f"{math.ceil((_peak(phases) + margin) / SAFETY / GIB * 10) / 10:.1f}"

        where = "of VRAM" if len(self.gpus) == 1 else "of VRAM on the first GPU"
        if job.caption:
            raise QwenFitError(
                f"auto-captioning needs the 7B text encoder resident: at least {smallest('resident')} GiB {where}, "
                f"the budget is {budget / GIB:.1f} GiB. Type a prompt describing the image "
                f"(then {smallest('streamed')} GiB suffice), or pick a larger VRAM budget."
            )
        raise QwenFitError(
            f"this job ({job.describe()}) needs at least {smallest('streamed')} GiB {where} with every block "
            f"streamed; the budget is {budget / GIB:.1f} GiB. Pick a larger VRAM budget, or lower the output "
            "size, the number of layers or references."
        )

    def whole_model_offload(self) -> Plan:
        """diffusers' whole-component offload: nothing to place; VAE tiling "auto" is on (the weights
        are offloaded because the card is small) unless the device is the CPU."""
        on_gpu = self.gpus[0].device != "cpu"
        tiling = self.decode_choices == (True,) or (len(self.decode_choices) > 1 and on_gpu)
        return Plan(
            job=self.job.describe(),
            sizes=self.sizes,
            budget_bytes=self.gpus[0].budget_bytes,
            host=self.host,
            components=self.components,
            strategy=WHOLE_MODEL_OFFLOAD,
            resident_blocks=(),
            streamed_blocks=(),
            slots=0,
            modulation="in blocks",
            text_encoder="offloaded",
            vae_tiling=tiling,
            vae_encode_tiling=False,
            vae_slicing=self.slicing,
            cfg="two_calls" if self.job.cfg else "off",
            phase_peaks=(),
            predicted_peak_bytes=None,
            pinned_bytes=0,
            notes=self.notes,
        )
