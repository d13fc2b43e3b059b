"""The planner: for a job, the settings and the GPUs' budgets, the one Plan of the run.

Pure: model sizes + settings + job + budgets -> a frozen Plan; no CUDA calls, nothing moves.

Weights are known exactly (measured from the modules, or from the files' headers). Activations are
modelled per phase with coefficients measured on an H200 (bench/results/), so the prediction covers
the whole generation:

- ``encode``: the text encoder (resident, or streamed unit by unit) and the VAE encoding the references;
- ``denoise``: resident blocks, the streaming ring, the modulation table and the activations of one
  block for all samples of the CFG pass;
- ``decode``: the VAE, tiled when the untiled decode would not fit.

The first GPU (the pipeline's own) holds the VAE, the text encoder and the transformer's small parts.
Every strategy reads its streamed blocks from the one page-locked host arena, so the pinned bytes are
those of a one-GPU plan whatever the strategy. The strategies:

- **one GPU / block split**: as many blocks resident as the GPUs' budgets hold, in contiguous runs
  (all on one GPU when one holds them: no hops), the faster GPUs (``Gpu.speed``) filled first; the
  rest stream through a ring on the first GPU. The blocks run one GPU after the other.
- **CFG-parallel** (two or more GPUs, CFG on, not "two_calls"): the first GPU computes the prompt's
  sample, a replica GPU (the other with the most room) the negative prompt's. Each holds one sample's
  activations and as many leading blocks as fit on it, streaming the rest through its own ring.
- **sequence-parallel** (two or more GPUs, CFG off): every GPU runs every block on its share of the
  image tokens, the attention heads shared out by speed (optim/planning/work_split.py); each keeps as
  many leading blocks as fit on it and streams the rest through its own ring. The other GPUs also hold
  the transformer's small parts.

Every candidate (strategy x VAE decode tiling x text encoder mode x ring slots, each with reference
encoding untiled whenever that fits) is kept; optim/planning/strategy_choice.py picks one: the best
one-GPU or block-split plan by ``preference`` (the fewest streamed blocks, a resident text encoder, no
encode tiling, no decode tiling, fewer GPUs, more ring slots), replaced by the CFG-parallel or
sequence-parallel candidate whose predicted step (``relative_step``) is at least 10% shorter. An
explicit ``multi_gpu`` choice keeps only its strategy's candidates, or refuses naming the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
from .strategy_choice import choose_plan
from .work_split import head_shares, token_spans

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


@dataclass(frozen=True)
class Gpu:
    """One device the plan may use: its torch name and the bytes the plan may take on it (None: no limit)."""

    device: str
    budget_bytes: int | None
    capability: tuple[int, int] | None = None  # CUDA compute capability; None: the CPU (or not known)
    # Relative compute speed (any unit, the same for every GPU of a run; optim/execution/devices.py measures
    # it): a block split puts its blocks on the faster GPUs first, sequence parallelism gives them more
    # heads, and the time model weighs the strategies with it. 1.0 for all: the GPUs in their order.
    speed: float = 1.0


Phases = tuple[tuple[str, int], ...]


def room_beside_others(gpus: tuple[Gpu, ...], others_bytes: int) -> tuple[Gpu, ...]:
    """``gpus`` with the first GPU's budget less ``others_bytes``: memory another model holds there now (one
    ComfyUI kept loaded after asking us to make room, and did not unload when we asked it back) is not ours
    to plan with. A GPU without a limit keeps none."""
    first = gpus[0]
    if others_bytes <= 0 or first.budget_bytes is None:
        return gpus
    return (replace(first, budget_bytes=max(0, first.budget_bytes - others_bytes)), *gpus[1:])


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
) -> Plan:
    """The plan of ``job`` under the user's ``offload`` and ``vae`` settings over ``gpus`` (the
    pipeline's own device first, each with its budget and relative speed; one entry for one GPU or the CPU).

    ``host`` says which weights are read from the model files at each use (only their staging
    buffers are then page-locked); ``components`` and ``notes`` (load-time facts) are carried into
    the plan, and so is ``arithmetic`` (the speed rung, chosen at load by
    optim/planning/speed_ladder.py). The factors of ``loras`` (the run's LoRA stack) stay on every GPU
    the plan uses, so they count there like the fixed bytes. Raises QwenFitError naming the fix when
    nothing fits, or when the strategy ``offload.multi_gpu`` names cannot run this job.
    """
    if not gpus:
        raise ValueError("plan_run needs at least one device")
    if loras.lines:
        coefficients = replace(coefficients, fixed=coefficients.fixed + loras.resident_bytes)
    search = _Search(sizes, job, offload, vae, tuple(gpus), host, components, notes, coefficients)
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
    ) -> None:
        self.sizes, self.job, self.offload, self.gpus, self.host, self.k = sizes, job, offload, gpus, host, k
        self.components, self.notes = components, notes
        self.decode_choices, self.encode_choices, self.slicing = vae_choices(vae, job)
        self.text_choices = ("resident",) if job.caption else ("resident", "streamed")
        self.slot_choices = (0,) if offload.mode == "none" else SLOT_CHOICES
        self.table = modulation_table_bytes(sizes, job) + sizes.dequant_workspace_bytes
        # "none" keeps every block resident: on one GPU the budget is not checked (the user asked for it).
        self.unchecked = offload.mode == "none" and len(gpus) == 1
        # A model narrower than two heads is never split by heads.
        self.heads = sizes.heads
        # The strategy asked for; with one device only one GPU can run (a parallel strategy asked for refuses it).
        forced = offload.multi_gpu in ("cfg_parallel", "sequence_parallel")
        self.strategy = offload.multi_gpu if len(gpus) > 1 or forced else "split"
        self.speeds = {g.device: g.speed / gpus[0].speed for g in gpus}

    def transient(self, cfg: str) -> tuple[int, int]:
        """(denoise transient bytes, fragmentation margin) for this CFG pass."""
        activations = denoise_activations(self.sizes, self.job, self.k, cfg)
        return activations + self.table, int(self.k.fragmentation_margin * activations)

    def token_transient(self, image_tokens: int) -> tuple[int, int]:
        """(denoise transient bytes, fragmentation margin) of one sample of ``image_tokens`` and every text token."""
        activations = int(
            (image_tokens + self.job.text_tokens) * self.sizes.hidden * self.k.block_activation_per_token_unit
        )
        return activations + self.table, int(self.k.fragmentation_margin * activations)

    def target(self, gpu: Gpu, margin: int) -> float:
        if gpu.budget_bytes is None or self.unchecked:
            return math.inf
        return gpu.budget_bytes * SAFETY - margin

    def by_room(self, indexes: Sequence[int], margin: int) -> list[int]:
        """``indexes`` of GPUs, the most room first; on ties the fastest, then in their order."""
        return sorted(indexes, key=lambda i: (-self.target(self.gpus[i], margin), -self.gpus[i].speed))

    def base_plan(self, text_mode: str, vae: tuple[bool, bool], peaks: Phases) -> Plan:
        """A one-GPU plan with every block resident: the fields every strategy fills the same way."""
        sizes = self.sizes
        tiling, encode_tiling = vae
        return Plan(
            job=self.job.describe(),
            sizes=sizes,
            budget_bytes=self.gpus[0].budget_bytes,
            host=self.host,
            components=self.components,
            strategy=ONE_GPU,
            resident_blocks=tuple(range(sizes.blocks)),
            streamed_blocks=(),
            slots=0,
            modulation="precomputed",
            text_encoder=text_mode,
            vae_tiling=tiling,
            vae_encode_tiling=encode_tiling,
            vae_slicing=self.slicing,
            cfg=self.offload.cfg if self.job.cfg else "off",
            phase_peaks=peaks,
            predicted_peak_bytes=_peak(peaks),
            # The same for every strategy: every GPU's ring reads the one shared host arena.
            pinned_bytes=pinned_host_bytes(sizes, text_mode, self.host),
            notes=self.notes,
        )

    def split_plan(
        self, counts: list[int], slots: int, text_mode: str, vae: tuple[bool, bool], transient: tuple[int, int]
    ) -> Plan | None:
        """One GPU or a block split: ``counts`` resident blocks per GPU, the rest streamed through ``slots``
        ring slots on the first GPU; None when a GPU would exceed its budget."""
        sizes, k = self.sizes, self.k
        denoise, margin = transient
        resident = sum(counts)
        ring = slots * sizes.block_bytes if resident < sizes.blocks else 0
        tiling, encode_tiling = vae
        peaks = [
            primary_phases(
                sizes, self.job, k, counts[0] * sizes.block_bytes, ring, text_mode, tiling, encode_tiling, denoise
            )
        ]
        peaks += [_secondary_phases(k, count * sizes.block_bytes, denoise if count else 0) for count in counts[1:]]
        used = [0] + [i for i, count in enumerate(counts) if i and count]
        if any(_peak(peaks[i]) > self.target(self.gpus[i], margin) for i in used):
            return None
        plan = replace(
            self.base_plan(text_mode, vae, peaks[0]),
            resident_blocks=tuple(range(resident)),
            streamed_blocks=tuple(range(resident, sizes.blocks)),
            slots=slots if resident < sizes.blocks else 0,
        )
        if len(used) == 1:
            return plan
        return replace(
            plan,
            strategy=SPLIT,
            devices=tuple(self.gpus[i].device for i in used),
            block_devices=tuple(d for d, i in enumerate(used) for _ in range(counts[i])),
            device_peaks=tuple((self.gpus[i].device, _peak(peaks[i])) for i in used),
        )

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
        return self.split_plan(counts, slots, text_mode, vae, transient)

    def replicated(
        self,
        used: list[int],
        transients: list[tuple[int, int]],
        other_bytes: int,
        slots: int,
        text_mode: str,
        vae: tuple[bool, bool],
    ) -> Plan | None:
        """Every GPU of ``used`` (the first GPU first) runs every block, beside ``transients[i]`` (its denoise
        bytes and margin) and, on the others, ``other_bytes``: on each the most leading blocks resident that
        fit, the rest streamed through its own ring of ``slots`` slots from the one shared host arena. None
        when a GPU cannot hold its ring (or, with ``slots`` 0, every block)."""
        sizes, job, k = self.sizes, self.job, self.k
        tiling, encode_tiling = vae

        def phases(i: int, resident: int, ring: int) -> Phases:
            weights, denoise = resident * sizes.block_bytes, transients[i][0]
            if i == 0:
                return primary_phases(sizes, job, k, weights, ring, text_mode, tiling, encode_tiling, denoise)
            return _secondary_phases(k, other_bytes + weights + ring, denoise)

        counts, peaks = [], []
        for i, index in enumerate(used):
            target = self.target(self.gpus[index], transients[i][1])
            if self.offload.mode != "blocks" and _peak(phases(i, sizes.blocks, 0)) <= target:
                resident, ring = sizes.blocks, 0
            else:
                ring = slots * sizes.block_bytes
                room = target - _peak(phases(i, 0, ring))
                if not slots or room < 0:
                    return None
                resident = 0 if self.offload.mode == "blocks" else int(room // sizes.block_bytes)
            counts.append(resident)
            peaks.append(phases(i, resident, ring))
        streams = min(counts) < sizes.blocks
        return replace(
            self.base_plan(text_mode, vae, peaks[0]),
            resident_blocks=tuple(range(counts[0])),
            streamed_blocks=tuple(range(counts[0], sizes.blocks)),
            slots=slots if streams else 0,
            devices=tuple(self.gpus[i].device for i in used),
            device_peaks=tuple((self.gpus[i].device, _peak(p)) for i, p in zip(used, peaks, strict=True)),
            device_resident=tuple(counts),
        )

    def cfg_parallel_plans(self) -> list[Plan]:
        """CFG-parallel: the first GPU computes the prompt's sample, the other GPU with the most room (on
        ties the fastest) the negative prompt's, each holding one sample's activations."""
        transient = self.transient("two_calls")
        replica = self.by_room(range(1, len(self.gpus)), transient[1])[0]
        found = self.each_choice(
            lambda slots, text_mode, vae: self.replicated([0, replica], [transient] * 2, 0, slots, text_mode, vae)
        )
        device = self.gpus[replica].device
        return [replace(p, strategy=CFG_PARALLEL, cfg=CFG_PARALLEL, replica_device=device) for p in found]

    def sequence_parallel_plans(self) -> list[Plan]:
        """Sequence-parallel, for each GPU count from 2 up to one head each: the first GPU and the others
        with the most room, the heads shared out by speed and the image tokens in the same proportion; each
        GPU holds its tokens' activations (and every text token's) and the transformer's small parts."""
        others = self.by_room(range(1, len(self.gpus)), 0)
        rest = self.sizes.transformer_rest_bytes  # each GPU embeds and projects its own tokens
        found = []
        for world in range(2, min(len(self.gpus), self.heads) + 1):
            used = [0, *others[: world - 1]]
            shares = head_shares(self.heads, [self.gpus[i].speed for i in used])
            transients = [
                self.token_transient(stop - start) for start, stop in token_spans(self.job.image_tokens, shares)
            ]
            plans = self.each_choice(
                lambda slots, text_mode, vae, used=used, transients=transients: self.replicated(
                    used, transients, rest, slots, text_mode, vae
                )
            )
            found += [replace(p, strategy=SEQUENCE_PARALLEL, head_shares=shares) for p in plans]
        return found

    def each_choice(self, make: Callable[[int, str, tuple[bool, bool]], Plan | None]) -> list[Plan]:
        """``make(slots, text_mode, (decode tiling, encode tiling))`` for every ring size, text encoder mode
        and decode tiling, the references encoded untiled wherever that fits (tiles change their latents)."""
        found = []
        for tiling in self.decode_choices:
            for text_mode in self.text_choices:
                for slots in self.slot_choices:
                    for encode_tiling in self.encode_choices:
                        plan = make(slots, text_mode, (tiling, encode_tiling))
                        if plan is not None:
                            found.append(plan)
                            break
        return found

    def candidates(self) -> list[Plan]:
        job, offload, strategy = self.job, self.offload, self.strategy
        several = len(self.gpus) > 1
        found: list[Plan] = []
        if several and strategy in ("auto", "cfg_parallel") and job.cfg and offload.cfg != "two_calls":
            found += self.cfg_parallel_plans()
        if several and strategy in ("auto", "sequence_parallel") and not job.cfg:
            found += self.sequence_parallel_plans()
        if strategy in ("auto", "split"):
            transient = self.transient(offload.cfg)
            found += self.each_choice(lambda slots, text_mode, vae: self.fill(slots, text_mode, vae, transient))
        return found

    def best(self) -> Plan:
        refusal = self.strategy_refusal()
        if refusal:
            raise QwenFitError(refusal)
        plan = choose_plan(self.candidates(), self.speeds, self.job.image_tokens, self.why_not_parallel())
        if plan is not None:
            return plan
        self.refuse()
        raise AssertionError("refuse() raises")

    def why_not_parallel(self) -> str:
        """Why no parallel candidate is made for this job (the end of a baseline plan's reason)."""
        if len(self.gpus) == 1:
            alone = "gpus 'one'" if self.offload.gpus == "one" else "the only device visible"
            return f"{self.gpus[0].device} alone: {alone}"
        if self.strategy == "split":
            return "multi_gpu 'split' chosen"
        if self.job.cfg:
            if self.offload.cfg == "two_calls":
                return "CFG 'two_calls' rules out CFG-parallel"
            return "CFG-parallel does not fit (each GPU needs one sample's activations and a ring)"
        if self.heads < 2:
            return "the model is narrower than two attention heads: no sequence parallelism"
        return "sequence-parallel does not fit (each GPU needs its tokens' activations and a ring)"

    def strategy_refusal(self) -> str | None:
        """Why the strategy ``multi_gpu`` names cannot run this job at all, with the fix; None when it can."""
        job, offload, count = self.job, self.offload, len(self.gpus)
        if self.strategy not in ("cfg_parallel", "sequence_parallel"):
            return None
        if self.strategy == "cfg_parallel":
            why = (
                "this job runs without CFG (a Lightning LoRA, or CFG scale 1)"
                if not job.cfg
                else "CFG 'two_calls' was chosen"
                if offload.cfg == "two_calls"
                else None
            )
        else:
            why = (
                "this job runs with CFG (it splits a CFG-off job's image tokens: a Lightning LoRA, or CFG scale 1)"
                if job.cfg
                else f"the model's {self.heads} attention head cannot be shared by two GPUs"
                if self.heads < 2 and count > 1
                else None
            )
        if why is None and count == 1:
            seen = "gpus is 'one'" if offload.gpus == "one" else f"only {self.gpus[0].device} is visible"
            why = f"it needs two or more GPUs and {seen}"
        if why is None:
            return None
        name = "CFG-parallel" if self.strategy == "cfg_parallel" else "sequence parallelism"
        fix = "Set gpus to 'all', or pick" if count == 1 and offload.gpus == "one" else "Pick"
        return f"{name} cannot run: {why}. {fix} multi_gpu 'auto' or 'split'."

    def refuse(self) -> None:
        """Raise the error that names the fix: the parallel strategy asked for does not fit, or the
        smallest workable budget."""
        sizes, job, offload, k = self.sizes, self.job, self.offload, self.k
        if self.strategy in ("cfg_parallel", "sequence_parallel"):
            name = "CFG-parallel" if self.strategy == "cfg_parallel" else "sequence parallelism"
            holds = "one sample's activations" if self.strategy == "cfg_parallel" else "its image tokens' activations"
            raise QwenFitError(
                f"{name} cannot run: each of its GPUs must hold {holds} and a ring of streamed blocks within the "
                "VRAM budget (the first GPU also the text encoder and the VAE). Pick multi_gpu 'auto' or 'split', "
                "or a larger VRAM budget."
            )
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
            reason="offload mode 'model': diffusers moves each component to the GPU as it runs",
        )
