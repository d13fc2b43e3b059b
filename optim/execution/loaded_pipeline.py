"""A loaded pipeline as runs see it: the diffusers pipeline, the load-time facts every plan carries (components,
host memory, the devices and their budgets, the speed rung) and the engine that places and runs it. The loader
(optim/loading/loader.py) builds one; jobs run it; views of it (VAE settings, LoRA stacks) share its weights.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import QwenFitError
from ..files.file_tensors import FileFeeds
from ..files.lora import NO_LORAS, LoraChoice, LoraStack, lightning_scheduler_config
from ..planning.arithmetic_choice import arithmetic_for
from ..planning.components import describe_components
from ..planning.host_memory import HostMemory
from ..planning.load_request import LoadRequest, compute_dtypes, describe
from ..planning.lora_sizes import lora_plan
from ..planning.model_sizes import ModelSizes, measure
from ..planning.plan import ComponentPlacement, LoraPlan, Plan
from ..planning.planner import Gpu, plan_run
from ..planning.speed_ladder import EXACT, Arithmetic
from ..quant.compressed_linear import enable_fast_blocks, reset_fast_arithmetic
from ..qwen.job_shape import JobShape, default_job
from ..qwen.variants import ModelIdentity, Variant
from ..settings import VaeSettings
from .arena_fill import current_stats as fill_stats
from .devices import can_compile
from .engine import EngineOptions, PipelineEngine
from .load_times import LoadTimes
from .lora_updates import LoraUpdates, check_stack, lora_layer_shapes
from .whole_model_offload import place_whole_model

log = logging.getLogger("qwenfit")

# The scheduler settings a Lightning LoRA changes for its runs (and a run without one restores).
_LIGHTNING_KEYS = ("base_shift", "max_shift", "shift_terminal")


@dataclass
class LoadedPipeline:
    """A loaded diffusers pipeline with what the pack knows about it: the load-time facts every plan
    carries (components, host memory, the devices and their budgets) and the engine that runs it."""

    pipeline: Any
    variant: Variant
    request: LoadRequest
    sizes: ModelSizes
    components: tuple[ComponentPlacement, ...]
    gpus: tuple[Gpu, ...]  # the devices plans may use, budgets fixed at load (the pipeline's own first)
    engine: PipelineEngine | None = None  # None when diffusers' whole-model offload places the weights
    vae: VaeSettings = VaeSettings()
    host: HostMemory | None = None
    notes: tuple[str, ...] = ()
    arithmetic: Arithmetic = EXACT
    load_times: LoadTimes | None = None  # where the load's seconds went
    loras: LoraStack = NO_LORAS  # applied as each layer runs (optim/quant/low_rank.py); no weight copy
    scheduler_config: dict[str, Any] = field(default_factory=dict)  # as loaded, before any Lightning LoRA
    lora_updates: LoraUpdates | None = None  # whole-model offload's (else the engine's)
    model: ModelIdentity | None = None  # what the weights are called (None: the variant's own name)

    @property
    def name(self) -> str:
        return self.request.source.name

    @property
    def identity(self) -> ModelIdentity:
        """What the weights are, for reports: FireRed-Image-Edit (runs as Edit-2509), or the variant."""
        return self.model or ModelIdentity(self.variant)

    @property
    def device(self) -> torch.device:
        return torch.device(self.request.device)

    @property
    def lightning(self) -> LoraChoice | None:
        """The Lightning LoRA of this view's stack, if any (runs then use its scheduler and CFG off)."""
        return self.loras.lightning

    def with_vae(self, vae: VaeSettings) -> LoadedPipeline:
        """A view of the same pipeline whose runs use these VAE settings (no copy of weights)."""
        return replace(self, vae=vae)

    def with_loras(self, stack: LoraStack) -> LoadedPipeline:
        """A view of the same pipeline whose runs apply ``stack`` (no copy of weights, nothing loaded).
        Each LoRA is checked against this transformer's layers now: a file for another model, or with
        ranks or widths that do not match, raises QwenFitError naming the file and the fix."""
        check_stack(stack, lora_layer_shapes(self.pipeline.transformer))
        return replace(self, loras=stack)

    def with_lora(self, choice: LoraChoice | None) -> LoadedPipeline:
        """This view with ``choice`` added on top of its LoRA stack (None: unchanged)."""
        return self if choice is None else self.with_loras(self.loras.plus(choice))

    @property
    def lora_plan(self) -> LoraPlan:
        """The bytes this view's LoRAs add on each GPU, as plans count them."""
        return lora_plan(self.loras, compute_dtypes(self.request)["transformer"].itemsize)

    @property
    def run_scheduler_config(self) -> dict[str, Any]:
        """The scheduler settings this view's runs use: a Lightning LoRA's, or the model's own."""
        return lightning_scheduler_config(self.scheduler_config) if self.lightning else self.scheduler_config

    def apply_loras(self) -> None:
        """Make the transformer apply this view's LoRA stack (cheap when it already does; after
        ``prepare``, whose plan says which GPUs hold the factors) and set the scheduler it needs."""
        dtype = compute_dtypes(self.request)["transformer"]
        if self.engine is not None:
            self.engine.use_loras(self.loras, dtype)
        elif self.lora_updates is not None:
            self.lora_updates.use(self.loras, (self.device,), dtype)
        config = self.run_scheduler_config
        if config:
            self.pipeline.scheduler.register_to_config(**{k: config.get(k) for k in _LIGHTNING_KEYS})

    def plan_for(self, job: JobShape) -> Plan:
        """The plan ``job`` would get (nothing moves)."""
        if self.engine is not None:
            return self.engine.plan_for(job, self.vae, self.lora_plan)
        offload = self.request.offload
        return plan_run(
            self.sizes, job, offload, self.vae, self.gpus, self.host, self.components, self.notes,
            arithmetic=self.arithmetic, loras=self.lora_plan,
        )  # fmt: skip

    @property
    def released(self) -> bool:
        """True once the pipeline cache unloaded it for another selection (its weights are gone)."""
        return self.engine is not None and self.engine.released

    def same_view_of(self, other: LoadedPipeline) -> LoadedPipeline:
        """``other`` (a fresh load of the same request) with this view's VAE settings and LoRAs."""
        return replace(other, vae=self.vae, loras=self.loras)

    def gpu_bytes_held(self) -> int:
        """Bytes this pipeline keeps on its GPUs between runs (0 under diffusers' whole-model offload)."""
        return 0 if self.engine is None else self.engine.gpu_bytes_held()

    def release_gpu(self) -> int:
        """Give back what this pipeline keeps on its GPUs between runs, keeping its host memory; the next
        run places the weights again without reading a file. Returns the bytes given back."""
        return 0 if self.engine is None else self.engine.release_gpu()

    @property
    def placed(self) -> bool:
        """Whether the weights are placed for a plan now (False after release_gpu until the next run)."""
        return self.engine is not None and self.engine.plan is not None and not self.engine.parked

    def last_plan_peak(self) -> int:
        """The predicted peak of the last run's plan (0 before the first run)."""
        plan = None if self.engine is None else self.engine.plan
        return 0 if plan is None else plan.predicted_peak_bytes

    def wait_until_filled(self) -> LoadedPipeline:
        """Return (this pipeline) once every weight the load left to background reads is in host memory.
        Runs never need this; code that reads the module weights directly does."""
        if self.engine is not None:
            self.engine.wait_until_filled()
        return self

    def describe_load(self) -> str:
        """How long the load took, phase by phase, and the weights still arriving in the background."""
        lines = [self.load_times.describe()] if self.load_times is not None else []
        filling = fill_stats().describe()
        return "\n".join([*lines, filling] if filling else lines)

    def describe_default_plan(self) -> str:
        """The plan of the reference job (Edit 1024 with one reference, Layered 640 with 4 layers), as
        the loader reports it before any run; a job that does not fit says so instead."""
        job = default_job("layered" if self.variant is Variant.LAYERED else "edit")
        model = f"Model: {self.identity.describe()}"
        try:
            return f"{model}\n{self.plan_for(job).describe()}"
        except QwenFitError as error:
            return f"{model}\nQwenFit plan for {job.describe()}: none fits ({error})"

    def prepare(self, job: JobShape) -> Plan:
        """Plan ``job`` and place the weights as the plan says."""
        return self.engine.prepare(job, self.vae, self.lora_plan) if self.engine is not None else self.plan_for(job)


def place_pipeline(
    pipeline: Any,
    request: LoadRequest,
    variant: Variant,
    model: ModelIdentity,
    gpus: tuple[Gpu, ...],
    notes: tuple[str, ...],
    arithmetic: Arithmetic,
    host: HostMemory,
    feeds: FileFeeds,
) -> LoadedPipeline:
    """A freshly built pipeline (weights in host memory or still in ``feeds``' files) ready to run: under
    diffusers' whole-model offload, or in the engine that places and streams its blocks per plan."""
    device = torch.device(request.device)
    offload = request.offload
    whole_model = offload.mode == "model"
    components = describe_components(pipeline, str(device), whole_model)
    engine = None
    if whole_model:
        sizes = measure(pipeline)
        place_whole_model(pipeline, device)
    else:
        compiled = arithmetic.compiled and can_compile(device)
        options = EngineOptions(offload, gpus, compile_blocks=compiled, arithmetic=arithmetic)
        engine = PipelineEngine(pipeline, device, options, host, components, notes, feeds)
        sizes = engine.sizes
    return LoadedPipeline(
        pipeline=pipeline,
        variant=variant,
        model=model,
        request=request,
        sizes=sizes,
        components=components,
        gpus=gpus,
        engine=engine,
        host=host,
        notes=notes,
        arithmetic=arithmetic,
        scheduler_config=dict(pipeline.scheduler.config),
        lora_updates=LoraUpdates(pipeline.transformer) if engine is None else None,
    )


def switch_speed(loaded: LoadedPipeline, request: LoadRequest) -> LoadedPipeline | None:
    """``loaded`` moved to ``request``'s speed rung without loading again, or None when ``request`` differs
    otherwise or its rung needs the blocks stored in another form (quantized on load): then load anew.
    An fp8 or int8 file switches between exact, fast and fastest in place."""
    same_rest = replace(request, precision=replace(request.precision, speed=loaded.request.precision.speed))
    if loaded.engine is None or same_rest != loaded.request:
        return None
    arithmetic = arithmetic_for(request, describe(request), loaded.gpus)
    if arithmetic.store_as != loaded.arithmetic.store_as:
        return None
    blocks = loaded.pipeline.transformer.transformer_blocks
    reset_fast_arithmetic(blocks)
    if arithmetic.kind != "expanded":
        enable_fast_blocks(blocks, arithmetic.kind)
    device = torch.device(request.device)
    loaded.engine.use_arithmetic(arithmetic, arithmetic.compiled and can_compile(device))
    log.info("QwenFit: %s switched to %s without loading again", request.source.name, arithmetic.describe())
    return replace(loaded, request=request, arithmetic=arithmetic)


def release_memory() -> None:
    """Collect garbage and return cached GPU blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
