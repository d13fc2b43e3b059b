"""The pack's engine on a loaded pipeline: plans each run for its budget and job, then runs it.

At load the engine takes the weights over (host arenas, page-locked on CUDA): transformer blocks
without modulation, modulation layers, text-encoder units. Before each run it asks the planner
where everything goes for this job, makes resident what the plan keeps resident (cheap copies from
the arena), and installs its transformer forward (streaming, precomputed modulation, batched CFG)
and the prompt cache. After the run the streaming rings are freed; resident weights stay.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import QwenFitError
from ..files.file_tensors import FileFeeds, drop_weights
from ..files.lora import LoraStack
from ..planning.host_memory import FILES, HostMemory
from ..planning.model_sizes import ModelSizes, measure
from ..planning.plan import CFG_PARALLEL, NO_LORA_PLAN, SEQUENCE_PARALLEL, ComponentPlacement, LoraPlan, Plan
from ..planning.planner import Gpu, plan_run, room_beside_others
from ..planning.speed_ladder import EXACT, Arithmetic
from ..qwen.anatomy import is_modulation
from ..qwen.job_shape import JobShape
from ..settings import CARD_BUDGETS, GIB, OffloadSettings, VaeSettings
from .attention_choice import describe_choice, fastest_attention
from .block_streamer import BlockStreamer
from .cfg_pairing import TextInput
from .devices import indexed
from .lora_updates import LoraUpdates
from .modulation import ModulationTable
from .prompt_cache import PromptCache
from .reference_latents import ReferenceLatents
from .step_cache import StepCache
from .text_encoder_engine import TextEncoderEngine
from .transformer_engine import TransformerEngine

log = logging.getLogger("qwenfit")
DEFAULT_VAE = VaeSettings()


@dataclass(frozen=True)
class EngineOptions:
    """What the user's settings fix for every run of this pipeline: the offload settings, the devices
    with the budgets resolved at load time (the pipeline's own first), and the execution switches."""

    offload: OffloadSettings
    gpus: tuple[Gpu, ...]
    attention_backend: str | None = None  # None: measured per job shape (optim/execution/attention_choice.py)
    compile_blocks: bool = False  # torch.compile the block function (fuses the elementwise work)
    arithmetic: Arithmetic = EXACT  # the speed rung (the blocks' fast flags are set at load)


def _smaller(budget: int | None, cap: int) -> int:
    return cap if budget is None else min(budget, cap)


def _block_layout(plan: Plan) -> tuple:
    """What decides where the transformer blocks are: a change means copying weights again."""
    return (
        plan.strategy, plan.resident_blocks, plan.slots, plan.devices, plan.block_devices, plan.replica_device,
        plan.device_resident, plan.head_shares,
    )  # fmt: skip


def _other_gpus(plan: Plan) -> list[tuple[torch.device, int]]:
    """CFG-parallel and sequence-parallel: every other GPU of the plan with its resident block count
    (it streams the others through its own ring); nothing for the other strategies."""
    if plan.strategy not in (CFG_PARALLEL, SEQUENCE_PARALLEL):
        return []
    return [(indexed(torch.device(d)), n) for d, n in zip(plan.devices[1:], plan.device_resident[1:], strict=True)]


class PipelineEngine:
    """Owns the placement of one pipeline's weights for its whole life."""

    def __init__(
        self,
        pipeline: Any,
        device: torch.device,
        options: EngineOptions,
        host: HostMemory | None = None,
        components: tuple[ComponentPlacement, ...] = (),
        notes: tuple[str, ...] = (),
        files: FileFeeds | None = None,
    ) -> None:
        """Take ``pipeline``'s weights over. ``host``, ``components`` and ``notes`` are the load-time
        facts every plan carries; ``files`` has the recipes of the weights left in the model files."""
        self.pipeline = pipeline
        self.device = device = indexed(device)
        # What this process had allocated on the GPU before the engine placed anything: the budget resolved
        # at load ("auto": the memory free then) already left it out.
        self._allocated_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        self.options = options
        self.host, self.components, self.notes = host, components, notes
        files = files or FileFeeds()
        self.sizes: ModelSizes = measure(pipeline)
        pin = device.type == "cuda"
        tr = pipeline.transformer
        text_files = host is not None and host.text_encoder == FILES
        modulation_files = host is not None and host.modulation == FILES
        # Weights left in the files fill in the background in this order, the order a run needs them:
        # the text encoder first. The modulation layers leave the blocks before those pack without them.
        self.text = TextEncoderEngine(
            pipeline.text_encoder, device, pin, feed=files.feed(pipeline.text_encoder), in_files=text_files
        )
        feed = files.feed(tr)
        self.modulation = ModulationTable(tr, device, pin, feed=feed, in_files=modulation_files)
        self.blocks = BlockStreamer(
            tr.transformer_blocks,
            device,
            skip=is_modulation,
            pin=pin,
            feed=feed,
            first_in_files=host.blocks_in_files if host is not None else 0,
            read_ahead=max(2, host.read_ahead) if host is not None else 2,
        )
        # The small parts outside the repeated blocks live on the GPU while the engine owns them.
        self._small_parts = [child for name, child in tr.named_children() if name != "transformer_blocks"]
        for child in self._small_parts:
            child.to(device)
        pipeline.vae.to(device)
        self.transformer = TransformerEngine(
            tr, device, self.blocks, self.modulation, pipeline.scheduler, options.attention_backend, options.offload.cfg
        )
        self.transformer.compile_blocks(options.compile_blocks)
        if options.arithmetic.step_cache:
            self.transformer.step_cache = StepCache()
        self.transformer.install()
        # CFG-parallel and sequence-parallel: one streamer per other GPU, fed from self.blocks' host arena.
        self.other_blocks: dict[torch.device, BlockStreamer] = {}
        self.loras = LoraUpdates(tr)
        self.prompts = PromptCache(pipeline.encode_prompt, self.text.encoding, self._pair_prompts)
        pipeline.encode_prompt = self.prompts
        self.references = ReferenceLatents(pipeline.vae.encode, pipeline.vae)
        pipeline.vae.encode = self.references
        self.plan: Plan | None = None
        self.attention_note = ""
        self.released = False  # release() ran: the weights are gone
        self.parked = False  # release_gpu() ran: nothing on the GPU until the next prepare()
        self.gpu_releases = 0  # how often release_gpu() gave memory back (the report shows it)
        self.replaced_note = ""  # set by a prepare() that placed the weights again after release_gpu()
        self._lean_budget: int | None = None  # set by lean_down() after an out-of-memory error
        self._lean_tiling = False
        self._others_at_plan = 0  # bytes another model held on the GPU when the last plan was made

    def plan_for(self, job: JobShape, vae: VaeSettings = DEFAULT_VAE, loras: LoraPlan = NO_LORA_PLAN) -> Plan:
        """The plan this job would get with ``loras`` applied (nothing moves)."""
        gpus = self.options.gpus
        if self._lean_budget is not None:  # after an out-of-memory error: a smaller budget
            gpus = tuple(replace(g, budget_bytes=_smaller(g.budget_bytes, self._lean_budget)) for g in gpus)
        if self._lean_tiling:
            vae = replace(vae, tiling="on")
        self._others_at_plan = self.others_allocated()  # prepare() reports it; counted once per plan
        beside = room_beside_others(gpus, self._others_at_plan)
        for budgets in (beside, gpus) if beside != gpus else (gpus,):
            try:
                return plan_run(
                    self.sizes, job, self.options.offload, vae, budgets, self.host, self.components, self.notes,
                    arithmetic=self.options.arithmetic, loras=loras,
                )  # fmt: skip
            except QwenFitError:
                if budgets is gpus:
                    raise  # no plan fits even the whole budget: that message names the fix
        raise AssertionError("unreachable")

    def others_allocated(self) -> int:
        """Bytes allocated on the GPU now that are neither this engine's nor there when it took the pipeline over:
        a model ComfyUI kept loaded beside ours (ComfyUI 0.8.0 may leave one partly loaded after it was asked
        for room). The next plan leaves them room instead of running out of memory."""
        if self.device.type != "cuda":
            return 0
        now = torch.cuda.memory_allocated(self.device)
        return max(0, now - self._allocated_before - self.gpu_bytes_held())

    def lean_down(self, job: JobShape, vae: VaeSettings = DEFAULT_VAE) -> str:
        """After an out-of-memory error: plan every later run one step leaner, i.e. for the next smaller
        card budget below the last plan's predicted peak (or 90% of that peak when no card size fits
        the job), with VAE tiling on. Returns what changed."""
        peak = self.plan.predicted_peak_bytes if self.plan is not None else self.options.gpus[0].budget_bytes or 0
        below = [gib * GIB for gib in CARD_BUDGETS.values() if gib * GIB < 0.9 * peak]
        self._lean_tiling = True
        candidates = ([int(max(below))] if below else []) + [int(0.9 * peak)]
        for budget in candidates:
            self._lean_budget = budget
            try:
                self.plan_for(job, vae)
                break
            except QwenFitError:
                self._lean_budget = None
        self.plan = None  # the next prepare places everything again
        return f"re-planned one step leaner: VRAM budget {self.lean_budget_text()}, VAE tiling on"

    def smaller_card(self) -> str | None:
        """The largest card size below the lean budget (what to try next), or None."""
        if self._lean_budget is None:
            return None
        below = [name for name, gib in CARD_BUDGETS.items() if gib * GIB < self._lean_budget]
        return below[-1] if below else None

    def lean_budget_text(self) -> str:
        return "as before" if self._lean_budget is None else f"{self._lean_budget / GIB:.1f} GiB"

    def describe_peak(self) -> str:
        """The last plan in a few words (for messages about it)."""
        if self.plan is None:
            return "no plan yet"
        plan = self.plan
        return (
            f"the plan keeping {len(plan.resident_blocks)} of {self.sizes.blocks} blocks resident "
            f"(predicted peak {plan.predicted_peak_bytes / GIB:.1f} GiB)"
        )

    def prepare(self, job: JobShape, vae: VaeSettings = DEFAULT_VAE, loras: LoraPlan = NO_LORA_PLAN) -> Plan:
        """Plan ``job`` and place the weights as the plan says (cheap when the plan did not change)."""
        if self.released:
            raise QwenFitError(
                "this pipeline was unloaded when another model was loaded (QwenFit holds one at a time): "
                "load it again with load_pipeline (QwenFit's nodes do this by themselves)."
            )
        plan = self.plan_for(job, vae, loras)
        if (others := self._others_at_plan) > 0:
            log.info(
                "QwenFit: %.2f GiB of the GPU is held by another model; this run is planned beside it", others / GIB
            )
        self._choose_attention(job)
        if self.parked:  # ComfyUI took the GPU memory back after the last run: place everything again
            for child in self._small_parts:
                child.to(self.device)
            self.pipeline.vae.to(self.device)
            self.text.unpark()
            self.parked = False
            self.replaced_note = (
                "weights placed again from host memory: ComfyUI's memory manager had taken the GPU memory back "
                f"({self.gpu_releases} time{'s' if self.gpu_releases != 1 else ''} since the load)"
            )
        else:
            self.replaced_note = ""
        if plan != self.plan:
            placement = {
                block: torch.device(plan.devices[d])
                for block, d in zip(plan.resident_blocks, plan.block_devices, strict=False)
            }
            if self.plan is None or _block_layout(plan) != _block_layout(self.plan):
                self.blocks.configure(plan.resident_blocks, max(plan.slots, 2), placement)
                self._place_other_gpus(plan, placement)
            self.text.configure(plan.text_encoder)
            self.plan = plan
            log.info("%s", plan.describe())
        return plan

    def _place_other_gpus(self, plan: Plan, placement: dict[int, torch.device]) -> None:
        """Give every other GPU of a CFG-parallel or sequence-parallel plan its streamer (its resident blocks
        and ring) and tell the transformer which GPU computes what."""
        wanted = _other_gpus(plan)
        for device in set(self.other_blocks) - {device for device, _ in wanted}:
            self.other_blocks.pop(device).release()
        streamers = []
        for device, resident in wanted:
            streamer = self.other_blocks.get(device) or self.blocks.follower(device)
            streamer.configure(range(resident), max(plan.slots, 2))
            self.other_blocks[device] = streamer
            streamers.append(streamer)
        if plan.strategy == CFG_PARALLEL:
            self.transformer.place(placement, replica=streamers[0])
        elif plan.strategy == SEQUENCE_PARALLEL:
            self.transformer.place(placement, ranks=tuple(streamers), head_shares=plan.head_shares)
        else:
            self.transformer.place(placement)

    def use_loras(self, stack: LoraStack, dtype: torch.dtype | None = None) -> None:
        """Apply ``stack`` in the next runs, its factors on every GPU of the current plan (call after
        :meth:`prepare`). Cheap when nothing changed; otherwise the modulation rows computed with the
        previous stack are dropped (LoRAs may change the modulation layers too). ``dtype``: the factors'
        (the transformer's compute dtype; by default the one diffusers reports)."""
        plan = self.plan
        devices = [self.device] if plan is None or not plan.devices else [torch.device(d) for d in plan.devices]
        if plan is not None and plan.replica_device and torch.device(plan.replica_device) not in devices:
            devices.append(torch.device(plan.replica_device))
        if self.loras.use(stack, [indexed(d) for d in devices], dtype or self.pipeline.transformer.dtype):
            self.modulation.keep_only(set())

    def wait_until_filled(self) -> None:
        """Return once every weight read in the background after the load is in host memory (runs wait per
        block by themselves; this is for code that reads the weights directly)."""
        for streamer in (self.text.streamer, self.modulation.streamer, self.blocks):
            streamer.wait_until_filled()

    def use_arithmetic(self, arithmetic: Arithmetic, compile_blocks: bool) -> None:
        """Run later jobs on another speed rung whose weights are stored as these are (the caller set the
        layers' fast flags): compilation, step cache and attention choice follow; the next run re-plans."""
        self.options = replace(self.options, arithmetic=arithmetic, compile_blocks=compile_blocks)
        self.transformer.compile_blocks(compile_blocks)
        self.transformer.step_cache = StepCache() if arithmetic.step_cache else None
        if arithmetic.rung == "exact":
            self.transformer.attention_backend = None
            self.attention_note = ""
        self.plan = None

    def _choose_attention(self, job: JobShape) -> None:
        """The fast rungs use the attention kernel measured fastest for this job's length; exact keeps
        diffusers' default (bit-identical to the reference), as does a backend the options name."""
        if self.options.attention_backend is not None or self.options.arithmetic.rung == "exact":
            return
        dtype = self.pipeline.transformer.dtype
        backend, timings = fastest_attention(self.device, job.image_tokens + job.text_tokens, dtype, lossy=True)
        self.transformer.attention_backend = backend
        self.attention_note = describe_choice(backend, timings)

    def run_notes(self) -> str:
        """What the last run did beyond its plan: the attention kernel, a placement made again after ComfyUI
        took the GPU memory back, references encoded in an earlier run, and the step cache."""
        lines = [note for note in (self.attention_note, self.replaced_note, self.references.summary()) if note]
        if self.transformer.step_cache is not None:
            lines.append(self.transformer.step_cache.summary())
        return "\n  ".join(lines)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Around one pipeline call: start pairing prompts afresh, set the VAE for each phase, free the
        streaming rings afterwards."""
        self.prompts.begin_run()
        self.references.begin_run()
        self.transformer.begin_run()
        plan = self.plan
        vae = self.pipeline.vae
        (vae.enable_slicing if plan.vae_slicing else vae.disable_slicing)()
        # Encoding tiles only when the plan must; decoding switches at the first denoising call.
        (vae.enable_tiling if plan.vae_encode_tiling else vae.disable_tiling)()

        def decode_tiling(_module: Any, _args: Any) -> None:
            (vae.enable_tiling if plan.vae_tiling else vae.disable_tiling)()

        switch = self.pipeline.transformer.register_forward_pre_hook(decode_tiling)
        try:
            yield
        finally:
            switch.remove()
            self.transformer.end_run()

    def _pair_prompts(self, encoded: list[Any]) -> None:
        """Prompt, then negative prompt (the pipelines' order): one batched pass per step for both."""
        if len(encoded) == 2 and self.options.offload.cfg != "two_calls":
            (cond, cond_mask), (uncond, uncond_mask) = encoded
            self.transformer.pairing.pair(TextInput(cond, cond_mask), TextInput(uncond, uncond_mask))

    def gpu_bytes_held(self) -> int:
        """Bytes this engine keeps on its GPUs between runs: resident blocks and text-encoder units, the small
        parts, the VAE and the LoRA factors (what ComfyUI's memory manager may ask back)."""
        if self.released or self.parked or self.device.type == "cpu":
            return 0
        modules = [*self._small_parts, self.pipeline.vae, *self.text.gpu_parts]
        small = sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))
        others = sum(streamer.gpu_bytes for streamer in self.other_blocks.values())
        return self.blocks.gpu_bytes + others + self.text.streamer.gpu_bytes + small + self.loras.nbytes

    def release_gpu(self) -> int:
        """Give back everything this engine keeps on its GPUs between runs and keep the host memory: the
        next :meth:`prepare` places the weights again from the arenas, without reading a file. Called when
        ComfyUI asks for the memory (another node needs it). Returns the bytes given back."""
        if self.released or self.parked:
            return 0
        held = self.gpu_bytes_held()
        self._release_other_gpus()
        self.blocks.configure((), 2)
        self.text.park()
        self.modulation.keep_only(set())  # rows computed on the GPU
        self.prompts.clear()  # embeddings on the GPU
        self.references.clear()  # so are the references' latents
        self.loras.clear()  # the next run's use_loras() builds the factors again
        for child in self._small_parts:
            child.to("cpu")
        self.pipeline.vae.to("cpu")
        self.plan = None
        self.parked = True
        self.gpu_releases += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("QwenFit gave %.2f GiB of GPU memory back to ComfyUI", held / GIB)
        return held

    def _release_other_gpus(self) -> None:
        self.transformer.place({})
        for streamer in self.other_blocks.values():
            streamer.release()
        self.other_blocks = {}

    def release(self) -> None:
        """Give back GPU copies and page-locked memory (the pipeline is being dropped)."""
        self.transformer.uninstall()
        self.loras.clear()
        self.pipeline.encode_prompt = self.prompts._encode
        self.prompts.clear()
        self.pipeline.vae.__dict__.pop("encode", None)
        self.references.clear()
        self._release_other_gpus()  # before the arena they read goes
        self.blocks.release()
        self.text.release()
        self.modulation.release()
        # Back to the host, so GPU memory returns to where it was even while the pipeline lives on.
        for child in self._small_parts:
            child.to("cpu")
        self.pipeline.vae.to("cpu")
        # Nothing of the weights stays behind in modules someone may still hold.
        for module in (self.pipeline.transformer, self.pipeline.text_encoder, self.pipeline.vae):
            drop_weights(module)
        self.released = True
