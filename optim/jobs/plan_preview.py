"""The plan a workflow will get, before it runs: the planner's Plan with its predicted peak per phase
and seconds per step, from the model files' headers alone.

Input: validated settings and the job (``PreviewSettings``; the host parses its own query into it).
The sizes come from the safetensors headers (``header_sizes``), the placement from the planner the
engine uses, the step time from ``step_time``; after a run of the same model on this device, the step
time is scaled by how that run compared with its own prediction.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import QwenFitError
from ..execution.device_speed import device_speed, known_device_speed
from ..execution.devices import check_fp8_matmul, resolve_gpus
from ..files.lora import NO_LORAS, LoraChoice, LoraStack
from ..files.sources import DiffusersFolder, PipelineSource, SourceDescription, SplitFiles
from ..monitoring.run_record import RunRecord
from ..planning.arithmetic_choice import arithmetic_for
from ..planning.header_sizes import sizes_from_headers
from ..planning.host_memory import HostMemory, plan_host_memory_for
from ..planning.load_request import LoadRequest, describe
from ..planning.lora_sizes import lora_plan
from ..planning.model_sizes import ModelSizes
from ..planning.plan import NO_LORA_PLAN, LoraPlan, Plan
from ..planning.planner import Gpu, plan_run
from ..planning.speed_ladder import EXACT, Arithmetic
from ..planning.step_time import DeviceSpeed, StepEstimate, estimate_step
from ..quant.dtypes import compute_dtype
from ..qwen.job_limits import edit_output_size
from ..qwen.job_shape import JobShape
from ..qwen.variants import Variant
from ..settings import FP8_FAST, SPEEDS, OffloadSettings, PrecisionSettings, VaeSettings

GIB = 1024**3
JOB_KINDS = ("auto", "edit", "layered")


@dataclass(frozen=True)
class PreviewSettings:
    """The loader's settings and the run node's job, validated, for one preview."""

    model: str  # as the host lists it
    variant: str = "auto"
    text_encoder: str = "auto"
    vae: str = "auto"
    lora: str = "none"
    lora_strength: float = 1.0
    loras: tuple[tuple[str, float], ...] = ()  # the QwenFit LoRA nodes after the loader: (name, strength)
    precision: PrecisionSettings = PrecisionSettings()
    offload: OffloadSettings = OffloadSettings()
    vae_settings: VaeSettings = VaeSettings()
    job: str = "auto"  # which run node asks: edit, layered, or auto (the model's kind)
    width: int = 0
    height: int = 0
    aspect: float = 1.0  # width / height of the first reference, for width = height = 0
    references: int = 1
    layers: int = 4
    resolution: int = 640
    steps: int = 0  # 0: the node's default (40 for Edit, 50 for Layered)
    cfg_scale: float = 4.0
    caption: bool = False
    masked: bool = False  # Edit with a MASK (crop_and_stitch): the run edits a crop, not the picture


MASKED_PREVIEW_NOTE = (
    "masked edit: planned for the crop around the mask, at width x height or ~1 MP (the crop's aspect is "
    "known when the run reads the mask; the run's report names the crop, its size and the plan made for it)"
)


@dataclass(frozen=True)
class Calibration:
    """How the last run of this model on this device compared with its own prediction."""

    factor: float  # measured / predicted s/step
    source: str


@dataclass(frozen=True)
class Preview:
    """The preview: what the files are, the job, and its plan (``plan.seconds_per_step`` set when the
    device's speed is known, calibrated by ``calibration``)."""

    variant: Variant
    job: JobShape
    sizes: ModelSizes
    plan: Plan
    step: StepEstimate | None
    calibration: Calibration | None
    notes: tuple[str, ...]
    rungs: tuple[tuple[str, float], ...] = ()  # (speed rung, predicted s/step) for each rung possible here
    model: str = ""  # what the weights are ("FireRed-Image-Edit (runs as Qwen-Image-Edit-2509...)")
    placement: str = ""  # where the weights are, in one line (``placement_summary``)


def placement_summary(plan: Plan, gpus: tuple[Gpu, ...]) -> str:
    """Where ``plan`` puts the weights over ``gpus`` (the devices it was planned for), in one line for the
    node's badge: on a GPU, how many transformer blocks stay on it and how many stream from host RAM; with
    no GPU, that every block is in host RAM (a CPU run has nothing on a GPU to count); then the text encoder
    and VAE tiling."""
    tail = f"text encoder {plan.text_encoder}, VAE tiling {'on' if plan.vae_tiling else 'off'}"
    if not plan.places_weights:
        return f"{plan.strategy}: diffusers moves each component to the GPU as it runs; {tail}"
    blocks = plan.sizes.blocks
    if all(torch.device(gpu.device).type == "cpu" for gpu in gpus):
        return f"no GPU: all {blocks} blocks in host RAM, {tail}"
    resident, streamed = len(plan.resident_blocks), len(plan.streamed_blocks)
    stream = f" ({streamed} streamed from host RAM)" if streamed else ""
    return f"{resident}/{blocks} blocks on GPU{stream}, {tail}"


def job_shape(settings: PreviewSettings, variant: Variant, loras: LoraStack = NO_LORAS) -> JobShape:
    """The job the run node would give the planner (a Lightning LoRA, the loader's or one of ``loras``,
    turns CFG off, as in the run)."""
    kind = settings.job if settings.job != "auto" else ("layered" if variant is Variant.LAYERED else "edit")
    if (kind == "layered") != (variant is Variant.LAYERED):
        node = "LayeredDecompose" if kind == "layered" else "InstructEdit"
        needs = "Qwen-Image-Layered" if kind == "layered" else "an Edit model (2509 or 2511)"
        raise QwenFitError(f"{settings.model} is {variant.value}; {node} needs {needs}. Pick another model.")
    lightning = loras.lightning is not None or (
        settings.lora != "none" and LoraChoice(Path(settings.lora)).is_lightning
    )
    cfg = settings.cfg_scale > 1 and not lightning
    if kind == "layered":
        steps = settings.steps or 50
        res = settings.resolution
        return JobShape("layered", res, res, 0, settings.layers, cfg, steps, settings.caption)
    # A masked edit runs on the crop: the picture's aspect says nothing about it (~1 MP either way).
    aspect = 1.0 if settings.masked else settings.aspect
    width, height = edit_output_size(settings.width, settings.height, aspect)
    return JobShape("edit", width, height, settings.references, cfg=cfg, steps=settings.steps or 40)


# ---- sizes, cached by file identity ---------------------------------------------------------------


def _file_stamps(source: PipelineSource) -> tuple:
    if isinstance(source, SplitFiles):
        files = [source.transformer, source.text_encoder, source.vae]
    else:
        assert isinstance(source, DiffusersFolder)
        files = sorted(p for p in source.path.rglob("*") if p.suffix in (".safetensors", ".json"))
    stamps = []
    for path in files:
        try:
            stat = os.stat(path)
        except OSError:
            continue  # describe() reports the missing file with its fix
        stamps.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


_SIZES_KEPT = 8
_sizes: OrderedDict[tuple, tuple[SourceDescription, ModelSizes]] = OrderedDict()
_sizes_lock = threading.Lock()


def _request(query: PreviewSettings, source: PipelineSource, device: torch.device) -> LoadRequest:
    return LoadRequest(source, query.variant, query.precision, query.offload, str(device))


def same_pipeline(query: PreviewSettings, source: PipelineSource, request: LoadRequest) -> bool:
    """True when a loaded pipeline's ``request`` is what ``query`` would load (same files and settings)."""
    return (
        request.source == source
        and request.variant == query.variant
        and request.precision == query.precision
        and request.offload == query.offload
    )


def model_sizes(request: LoadRequest) -> tuple[SourceDescription, ModelSizes]:
    """What ``request``'s files are and the engine's sizes once loaded as it asks (headers only; the last
    few answers are remembered until a file changes)."""
    device = torch.device(request.device)
    key = (request.source, request.variant, request.precision, request.device, _file_stamps(request.source))
    with _sizes_lock:
        if key in _sizes:
            _sizes.move_to_end(key)
            return _sizes[key]
    desc = describe(request)
    answer = desc, sizes_from_headers(desc, request.precision, device)
    with _sizes_lock:
        _sizes[key] = answer
        while len(_sizes) > _SIZES_KEPT:
            _sizes.popitem(last=False)
    return answer


# ---- the preview --------------------------------------------------------------------------------


def _plan(
    sizes: ModelSizes,
    job: JobShape,
    settings: PreviewSettings,
    gpus: tuple[Gpu, ...],
    host: HostMemory,
    notes: tuple,
    arithmetic: Arithmetic = EXACT,
    loras: LoraPlan = NO_LORA_PLAN,
) -> Plan:
    # The engine's own call (PipelineEngine.plan_for), with the loader's settings.
    return plan_run(
        sizes, job, settings.offload, settings.vae_settings, gpus, host, notes=notes, arithmetic=arithmetic,
        loras=loras,
    )  # fmt: skip


def _rungs(
    request: LoadRequest,
    desc: SourceDescription,
    gpus: tuple[Gpu, ...],
    estimate: Callable[[Arithmetic], float],
) -> tuple[tuple[str, float], ...]:
    """Predicted s/step of every speed rung these GPUs can run (the memory plan is the chosen rung's)."""
    rungs = []
    for rung in SPEEDS[1:]:
        try:
            arithmetic = arithmetic_for(replace(request, precision=replace(request.precision, speed=rung)), desc, gpus)
        except QwenFitError:
            continue  # not on these GPUs (the chosen rung's own refusal is the preview's error)
        rungs.append((rung, estimate(arithmetic)))
    return tuple(rungs)


def _model_name(settings: PreviewSettings) -> str:
    """The name a run record carries for this model (the loader's source name: the file or folder name)."""
    return settings.model.rsplit("/", 1)[-1]


def preview(
    settings: PreviewSettings,
    source: PipelineSource,
    device: torch.device,
    last_run: RunRecord | None = None,
    may_measure_speed: Callable[[], bool] = lambda: True,
    loaded_gpus: tuple[Gpu, ...] | None = None,
    loras: LoraStack = NO_LORAS,
) -> Preview:
    """The plan ``settings`` would get for their job. Raises QwenFitError when no plan can be made (the
    message says why and what would do); ``may_measure_speed`` is asked before the device's speed is
    first measured; ``loaded_gpus`` are the budgets this very pipeline fixed when it loaded (an "auto"
    budget is read once, at load: the preview must not read it again while that pipeline holds memory);
    ``loras`` is the stack the run would apply (the loader's LoRA and the QwenFit LoRA nodes'), whose
    bytes the plan counts (headers only)."""
    if FP8_FAST in (settings.precision.transformer, settings.precision.text_encoder):
        check_fp8_matmul(device)
    request = _request(settings, source, device)
    desc, sizes = model_sizes(request)
    job = job_shape(settings, desc.variant, loras)
    # The loaded pipeline's GPUs carry the speeds measured at its load: nothing to measure here then.
    may_measure_gpus = may_measure_speed if loaded_gpus is None else lambda: False
    gpus, notes = resolve_gpus(settings.offload, device, may_measure_speed=may_measure_gpus)
    if loaded_gpus is not None:
        gpus = loaded_gpus
        if settings.offload.vram_budget == "auto" and gpus[0].budget_bytes is not None:
            notes += (f"VRAM budget auto: {gpus[0].budget_bytes / GIB:.1f} GiB, fixed when this model loaded",)
    arithmetic = arithmetic_for(request, desc, gpus)
    host = plan_host_memory_for(request, desc, arithmetic)
    itemsize = compute_dtype(settings.precision.transformer, device).itemsize
    plan = _plan(sizes, job, settings, gpus, host, notes, arithmetic, lora_plan(loras, itemsize))
    placement = placement_summary(plan, gpus)
    if not plan.places_weights:
        return Preview(
            desc.variant, job, sizes, plan, None, None, (), model=desc.identity.describe(), placement=placement
        )
    step = _step_estimate(settings, sizes, job, plan, device, may_measure_speed)
    if step is None:
        note = "s/step: the device's speed is measured once no run holds it; ask again after the run"
        return Preview(
            desc.variant, job, sizes, plan, None, None, (note,), model=desc.identity.describe(), placement=placement
        )
    estimate, speed = step
    calibration = _calibration(last_run, settings, sizes, gpus, host, speed, str(device), arithmetic)
    factor = calibration.factor if calibration else 1.0
    seconds = estimate.seconds * factor
    rungs = _rungs(
        request,
        desc,
        gpus,
        lambda a: (
            factor
            * estimate_step(sizes, job, replace(plan, arithmetic=a), speed, settings.precision.transformer).seconds
        ),
    )
    seconds_plan = replace(plan, seconds_per_step=seconds)
    return Preview(
        desc.variant, job, sizes, seconds_plan, estimate, calibration, (), rungs, desc.identity.describe(), placement
    )


def _calibration(
    last: RunRecord | None,
    settings: PreviewSettings,
    sizes: ModelSizes,
    gpus: tuple[Gpu, ...],
    host: HostMemory,
    speed: DeviceSpeed,
    device: str,
    arithmetic: Arithmetic = EXACT,
) -> Calibration | None:
    """How the last run of this model on this device compared with its own prediction."""
    if last is None or last.job is None or last.model != _model_name(settings) or last.device != device:
        return None
    if last.seconds_per_step <= 0:
        return None
    plan = _plan(sizes, last.job, settings, gpus, host, (), arithmetic)
    predicted = estimate_step(sizes, last.job, plan, speed, settings.precision.transformer)
    return Calibration(
        last.seconds_per_step / predicted.seconds, f"your last run of this model ({last.job.describe()})"
    )


def _step_estimate(
    query: PreviewSettings,
    sizes: ModelSizes,
    job: JobShape,
    plan: Plan,
    device: torch.device,
    may_measure_speed: Callable[[], bool],
) -> tuple[StepEstimate, DeviceSpeed] | None:
    dtype = compute_dtype(query.precision.transformer, device)
    speed = known_device_speed(device, dtype)
    if speed is None:
        if not may_measure_speed():
            return None
        speed = device_speed(device, dtype)
    return estimate_step(sizes, job, plan, speed, query.precision.transformer), speed
