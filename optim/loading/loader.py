"""Load a Qwen-Image pipeline (a diffusers folder or ComfyUI split files), offline, safetensors only."""

from __future__ import annotations

import gc
import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import InternalError, QwenFitError
from ..execution.arena_fill import begin_load
from ..execution.arena_fill import current_stats as fill_stats
from ..execution.devices import can_compile, check_fp8_matmul, resolve_gpus
from ..execution.engine import EngineOptions, PipelineEngine
from ..execution.lora_updates import LoraUpdates, check_stack, lora_layer_shapes
from ..execution.whole_model_offload import place_whole_model
from ..files.file_tensors import FileFeeds
from ..files.lora import NO_LORAS, LoraChoice, LoraStack, lightning_scheduler_config
from ..files.safetensors_file import PICKLE_SUFFIXES
from ..files.sources import DiffusersFolder, PipelineSource, SourceDescription, describe_folder, describe_split_files
from ..files.weight_source import WeightSource
from ..planning.components import describe_components
from ..planning.host_memory import HostMemory, HostWeights, estimate_component, host_budget_bytes, plan_host
from ..planning.lora_sizes import lora_plan
from ..planning.model_sizes import ModelSizes, measure
from ..planning.plan import ComponentPlacement, LoraPlan, Plan
from ..planning.planner import Gpu, plan_run
from ..planning.speed_ladder import EXACT, Arithmetic, choose_arithmetic
from ..quant.compressed_linear import enable_fast_blocks, reset_fast_arithmetic
from ..quant.dtypes import compute_dtype, dtype_name
from ..quant.formats import QUANTIZED, quantize_linears
from ..quant.fp8_scope import FP8_AS_STORED, FP8_NONE, FP8_SCOPES, fp8_mode
from ..quant.gguf import compile_expansions
from ..qwen.anatomy import (
    TRANSFORMER_BLOCKS,
    is_language_block_linear,
    is_modulation_key,
    is_text_unit_key,
    is_transformer_block_key,
)
from ..qwen.architectures import processor as arch_processor
from ..qwen.architectures import scheduler as arch_scheduler
from ..qwen.job_shape import JobShape, default_job
from ..qwen.variants import ModelIdentity, Variant, detect_variant
from ..settings import FP8, FP8_FAST, INT8, OffloadSettings, PrecisionSettings, VaeSettings
from . import text_processors
from .assemble import build_text_encoder, build_transformer, build_vae
from .load_times import LoadTimes

log = logging.getLogger("qwenfit")

_REQUIRED_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "processor")
_WEIGHT_PARTS = ("transformer", "vae", "text_encoder")
# The scheduler settings a Lightning LoRA changes for its runs (and a run without one restores).
_LIGHTNING_KEYS = ("base_shift", "max_shift", "shift_terminal")
# VAE input channels per variant: the Layered VAE works on RGBA.
_VAE_CHANNELS = {Variant.EDIT_2509: 3, Variant.EDIT_2511: 3, Variant.LAYERED: 4}


@dataclass(frozen=True)
class LoadRequest:
    """Everything that decides which weights are loaded and how; equal requests share a pipeline.
    LoRAs are not part of it: they apply at run time (``LoadedPipeline.with_lora``), never reload."""

    source: PipelineSource
    variant: str = "auto"
    precision: PrecisionSettings = PrecisionSettings()
    offload: OffloadSettings = OffloadSettings()
    device: str = "cpu"


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
        return lora_plan(self.loras, _compute_dtypes(self.request)["transformer"].itemsize)

    @property
    def run_scheduler_config(self) -> dict[str, Any]:
        """The scheduler settings this view's runs use: a Lightning LoRA's, or the model's own."""
        return lightning_scheduler_config(self.scheduler_config) if self.lightning else self.scheduler_config

    def apply_loras(self) -> None:
        """Make the transformer apply this view's LoRA stack (cheap when it already does; after
        ``prepare``, whose plan says which GPUs hold the factors) and set the scheduler it needs."""
        dtype = _compute_dtypes(self.request)["transformer"]
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


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QwenFitError(f"{what} is missing ({path.name} not found in {path.parent}).") from None
    except (OSError, ValueError) as exc:
        raise QwenFitError(f"{what} could not be read ({path}): {exc}. Re-copy the file.") from None


def inspect_folder(folder: Path) -> tuple[Variant, dict[str, Any]]:
    """Check a diffusers folder is a complete, safetensors-only Qwen-Image pipeline; return its variant."""
    source = f"model folder '{folder.name}'"
    if not folder.is_dir():
        raise QwenFitError(f"{source} does not exist any more; refresh the page (press R) and pick another.")
    model_index = _read_json(folder / "model_index.json", f"{source}: model_index.json")
    missing = [p for p in _REQUIRED_PARTS if not (folder / p).is_dir()]
    if "tokenizer" in missing:
        raise QwenFitError(
            f"{source} has no tokenizer/ folder. Copy the tokenizer folder of the same release "
            "(vocab.json, merges.txt, tokenizer_config.json) into it."
        )
    if missing:
        raise QwenFitError(f"{source} is incomplete: missing {', '.join(missing)}. Re-copy the whole folder.")
    for part in _WEIGHT_PARTS:
        files = [p.name for p in (folder / part).iterdir() if p.is_file()]
        if not any(f.endswith(".safetensors") for f in files):
            pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
            found = f" (found only pickle files {', '.join(pickles)}, which QwenFit never loads)" if pickles else ""
            raise QwenFitError(
                f"{source}/{part} has no .safetensors weights{found}. Use the safetensors release of the model."
            )
    transformer_config = _read_json(folder / "transformer" / "config.json", f"{source}: transformer config")
    variant = detect_variant(model_index, transformer_config, source)
    vae_config = _read_json(folder / "vae" / "config.json", f"{source}: VAE config")
    channels = vae_config.get("input_channels", 3)
    if channels != _VAE_CHANNELS[variant]:
        kind = "4-channel (Layered)" if channels == 4 else f"{channels}-channel"
        raise QwenFitError(
            f"{source}: its VAE is {kind} but its transformer is {variant.value}. Use the VAE of the same "
            "release (qwen_image_layered_vae for Layered, qwen_image_vae for Edit)."
        )
    return variant, model_index


def describe(request: LoadRequest) -> SourceDescription:
    """Check the request's files (headers and configs only) and say what they are."""
    source = request.source
    if isinstance(source, DiffusersFolder):
        _, model_index = inspect_folder(source.path)
        return describe_folder(source.path, model_index, request.variant)
    return describe_split_files(source, request.variant)


def _compute_dtypes(request: LoadRequest) -> dict[str, torch.dtype]:
    device = torch.device(request.device)
    return {
        part: compute_dtype(getattr(request.precision, part), device) for part in ("transformer", "text_encoder", "vae")
    }


def _fp8_modes(request: LoadRequest, desc: SourceDescription) -> dict[str, str]:
    return {
        "transformer": fp8_mode(request.precision.transformer, desc.transformer),
        "text_encoder": fp8_mode(request.precision.text_encoder, desc.text_encoder),
    }


def arithmetic_for(request: LoadRequest, desc: SourceDescription, gpus: tuple[Gpu, ...]) -> Arithmetic:
    """The speed rung of the transformer's arithmetic for these files on these GPUs (fixed at load: it
    decides how the blocks are stored)."""
    storage = request.precision.transformer
    if desc.transformer.holds_gguf():
        _check_gguf_request(request, desc)
        return GGUF_EXACT if desc.transformer.holds_gguf_blocks() else GGUF_FLOAT
    if desc.transformer.holds_comfy_quant():
        return _comfy_quant_arithmetic(request, desc, gpus)
    if storage == "auto":
        as_stored = _fp8_modes(request, desc)["transformer"] == FP8_AS_STORED
        storage = FP8 if as_stored else dtype_name(_compute_dtypes(request)["transformer"])
    return choose_arithmetic(request.precision.speed, storage, [g.capability for g in gpus])


GGUF_EXACT = Arithmetic("exact", "expanded", None, False, "GGUF blocks expanded one weight at a time where used")
GGUF_FLOAT = Arithmetic("exact", "expanded", None, False, "GGUF float weights (F16/BF16), computed as stored")


def _check_gguf_request(request: LoadRequest, desc: SourceDescription) -> None:
    """GGUF blocks compute as stored, expanded where used: no other storage, no 8-bit products (yet)."""
    name = desc.transformer.names
    if request.precision.transformer != "auto":
        raise QwenFitError(
            f"{name} is a GGUF file: its weights stay in their GGUF types. Set the transformer precision to auto "
            f"(it is {request.precision.transformer}), or load a safetensors release to store them otherwise."
        )
    if request.precision.speed in ("fast", "fastest"):
        raise QwenFitError(
            f"speed {request.precision.speed} needs fp8 or int8 weights; {name} is a GGUF file, which computes "
            "exactly as stored. Pick speed exact (or auto), or load the fp8 safetensors release for the fast rungs."
        )


def _comfy_quant_arithmetic(request: LoadRequest, desc: SourceDescription, gpus: tuple[Gpu, ...]) -> Arithmetic:
    """Comfy-Org's int8 / mxfp8 / nvfp4 layers stay as stored (optim/quant/comfy_int8.py, mxfp8.py, nvfp4.py):
    exact expands them where used; int8 files (with or without ConvRot) also take the fast rungs, multiplying
    the stored int8 weights as ComfyUI does (nothing re-quantized, so exact, fast and fastest switch in place)."""
    name, formats = desc.transformer.names, desc.transformer.comfy_quant_formats()
    if request.precision.transformer != "auto":
        raise QwenFitError(
            f"{name} stores its weights quantized ({', '.join(formats)}): they stay so. Set the transformer "
            f"precision to auto (it is {request.precision.transformer}), or load the bf16 release to store them "
            "otherwise."
        )
    blackwell = [f for f in formats if f in ("mxfp8", "nvfp4")]
    speed = request.precision.speed
    if speed in ("fast", "fastest") and blackwell:
        raise QwenFitError(
            f"speed {speed} is not offered for {name} ({', '.join(formats)}): native {'/'.join(blackwell)} "
            "products need Blackwell tensor cores (compute capability 10), which QwenFit does not use, so its "
            "weights are expanded where used and compute exactly as stored. Pick speed exact (or auto), or load "
            "the int8 (ConvRot) or fp8 release for the fast rungs."
        )
    if speed in ("fast", "fastest"):  # int8 only: ComfyUI's W8A8 product on the stored weights
        rung = choose_arithmetic(speed, INT8, [g.capability for g in gpus])
        # MEASURED's int8 figures are the pack's own int8 rung's; ComfyUI's product was not benchmarked yet.
        return replace(rung, reason=f"Comfy-Org {', '.join(formats)} file: {rung.reason}", benchmarked=False)
    native = (
        f"; native {'/'.join(blackwell)} products need Blackwell tensor cores (compute capability 10), not used"
        if blackwell
        else "; speed fast multiplies them in int8"
    )
    why = f"Comfy-Org {', '.join(formats)} weights expanded to the compute dtype one weight at a time where used"
    return Arithmetic("exact", "expanded", None, False, why + native)


def _stays_in_files(kind: str, fp8: str) -> bool:
    """A component's weights can be read back from its files when the plan stores them as the files
    do (or as a plain cast): not when they are quantized on load."""
    return kind not in QUANTIZED and fp8 in (FP8_NONE, FP8_AS_STORED)


def _deferred_parts(request: LoadRequest, arithmetic: Arithmetic) -> dict[str, bool]:
    """Per component: may its streamed weights (transformer blocks, text-encoder units) stay in the files
    at load? The engine then reads them into host memory in the background, or at each use when the host
    plan says so. Not for diffusers' whole-model offload (it moves modules the engine never sees), nor
    for weights quantized on load (there is nothing on disk to read back)."""
    engine_places = request.offload.mode != "model"
    transformer = request.precision.transformer if arithmetic.store_as is None else arithmetic.store_as
    return {
        "transformer": engine_places and transformer not in QUANTIZED,
        "text_encoder": engine_places and request.precision.text_encoder not in QUANTIZED,
    }


def plan_host_memory_for(request: LoadRequest, desc: SourceDescription, arithmetic: Arithmetic) -> HostMemory:
    """Which weights wait in host memory and which are read from the files when used, estimated from the
    files' headers (the loader and the plan preview both ask here)."""
    precision = request.precision
    dtypes, fp8 = _compute_dtypes(request), _fp8_modes(request, desc)
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
        blocks_can_stay_in_files=_deferred_parts(request, arithmetic)["transformer"]
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


def _build(
    request: LoadRequest,
    desc: SourceDescription,
    feeds: FileFeeds,
    checkpoint: Callable[[str], None],
    arithmetic: Arithmetic,
    times: LoadTimes,
) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline, QwenImageLayeredPipeline
    from transformers import Qwen2_5_VLConfig

    device = torch.device(request.device)
    precision = request.precision
    dtypes = _compute_dtypes(request)
    # Weights load into host memory; the engine (or diffusers' offload) places them afterwards.
    home = torch.device("cpu")
    folder = desc.folder
    te_config = (
        Qwen2_5_VLConfig.from_pretrained(str(folder / "text_encoder"), local_files_only=True) if folder else None
    )
    fp8 = _fp8_modes(request, desc)
    transformer_fp8, text_encoder_fp8 = fp8["transformer"], fp8["text_encoder"]
    defer = _deferred_parts(request, arithmetic)
    transformer = build_transformer(
        desc.transformer,
        desc.architecture,
        desc.folder_config("transformer"),
        desc.variant,
        dtypes["transformer"],
        home,
        fp8=transformer_fp8,
        keep_in_files=is_transformer_block_key if defer["transformer"] else None,
        feeds=feeds,
    )
    times.mark("transformer")
    checkpoint("load")
    text_encoder = build_text_encoder(
        desc.text_encoder,
        desc.architecture,
        te_config,
        dtypes["text_encoder"],
        home,
        fp8=text_encoder_fp8,
        keep_in_files=is_text_unit_key if defer["text_encoder"] else None,
        feeds=feeds,
    )
    if FP8_FAST in (precision.transformer, precision.text_encoder):
        check_fp8_matmul(device)
    for part, module in (("transformer", transformer), ("text_encoder", text_encoder)):
        kind = getattr(precision, part)
        if part == "transformer" and arithmetic.store_as is not None:  # the fast rung's 8-bit form
            kind = arithmetic.store_as
        if kind in QUANTIZED:  # weight-only integer formats: quantized layer by layer after loading
            quantize_linears(module, kind, FP8_SCOPES[part])
    if arithmetic.kind != "expanded":
        enable_fast_blocks(transformer.transformer_blocks, arithmetic.kind)
    if desc.transformer.holds_gguf() and can_compile(device):
        compile_expansions(transformer)
    times.mark("text encoder")
    checkpoint("load")
    vae = build_vae(desc.vae, desc.architecture, desc.folder_config("vae"), desc.vae_channels, dtypes["vae"], home)
    times.mark("VAE")
    tokenizer = text_processors.tokenizer(desc.tokenizer_dir)
    if folder is not None:
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler"), local_files_only=True)
        proc = text_processors.folder_processor(folder / "processor")
    else:
        scheduler, proc = arch_scheduler(desc.architecture), arch_processor(desc.architecture, tokenizer)
    pipeline_cls = QwenImageLayeredPipeline if desc.variant is Variant.LAYERED else QwenImageEditPlusPipeline
    return pipeline_cls(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=proc,
        transformer=transformer,
    )


def load_pipeline(request: LoadRequest, checkpoint: Callable[[str], None] | None = None) -> LoadedPipeline:
    """Load and place a pipeline as ``request`` says, one tensor at a time, straight into the
    planned dtype. Nothing is downloaded; only safetensors are read (never pickles).

    ``checkpoint("load")`` is called between components; raising from it (ComfyUI's Cancel) stops
    the load. On failure or cancel everything partly loaded is released before the error propagates.
    """
    times = LoadTimes()
    begin_load()
    desc = describe(request)
    times.mark("file headers")
    device = torch.device(request.device)
    pipeline = None
    cancels: list[BaseException] = []

    def check(phase: str) -> None:
        """``checkpoint``, remembering what it raised: a cancel propagates as it is, not as a bad file."""
        if checkpoint is None:
            return
        try:
            checkpoint(phase)
        except BaseException as cancel:
            cancels.append(cancel)
            raise

    try:
        offload = request.offload
        gpus, notes = resolve_gpus(offload, device)
        arithmetic = arithmetic_for(request, desc, gpus)
        host = plan_host_memory_for(request, desc, arithmetic)
        check("load")
        feeds = FileFeeds()
        pipeline = _build(request, desc, feeds, check, arithmetic, times)
        pipeline.set_progress_bar_config(disable=True)
        whole_model = offload.mode == "model"
        components = describe_components(pipeline, str(device), whole_model)
        engine = None
        if whole_model:
            sizes = measure(pipeline)
            place_whole_model(pipeline, device)
        else:
            compiled = arithmetic.rung != "exact" and can_compile(device)
            options = EngineOptions(offload, gpus, compile_blocks=compiled, arithmetic=arithmetic)
            engine = PipelineEngine(pipeline, device, options, host, components, notes, feeds)
            sizes = engine.sizes
        times.mark("placing")
    except QwenFitError:
        pipeline = None
        release_memory()
        raise
    except BaseException as exc:  # a corrupt file, a wrong shape, or a cancel: nothing partly loaded stays
        pipeline = None
        # The traceback's frames hold the partly built models; whoever keeps the error (ComfyUI's report)
        # must not keep them too.
        traceback.clear_frames(exc.__traceback__)
        release_memory()
        # A cancel propagates as it is: ComfyUI's is an Exception in 0.3.75 and a BaseException since.
        if any(exc is cancel for cancel in cancels) or not isinstance(exc, Exception):
            log.info(
                "QwenFit: loading %s stopped (%s); cleaned up: nothing partly loaded is kept, memory given back",
                request.source.name, type(exc).__name__,
            )  # fmt: skip
            raise
        # Bad files are reported by the readers and the fill as QwenFitError (naming the file and the fix);
        # anything else is ours, and blaming the user's files would send them re-downloading good ones.
        log.exception("QwenFit: loading %s failed inside QwenFit", request.source.name)
        raise InternalError(f"loading '{request.source.name}' failed ({type(exc).__name__}: {exc}).") from exc
    loaded = LoadedPipeline(
        pipeline=pipeline,
        variant=desc.variant,
        model=desc.identity,
        request=request,
        sizes=sizes,
        components=components,
        gpus=gpus,
        engine=engine,
        host=host,
        notes=notes,
        arithmetic=arithmetic,
        load_times=times,
        scheduler_config=dict(pipeline.scheduler.config),
        lora_updates=LoraUpdates(pipeline.transformer) if engine is None else None,
    )
    log.info("QwenFit loaded %s:\n%s", request.source.name, loaded.describe_default_plan())
    return loaded


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
    loaded.engine.use_arithmetic(arithmetic, arithmetic.rung != "exact" and can_compile(device))
    log.info("QwenFit: %s switched to %s without loading again", request.source.name, arithmetic.describe())
    return replace(loaded, request=request, arithmetic=arithmetic)


def release_memory() -> None:
    """Collect garbage and return cached GPU blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
