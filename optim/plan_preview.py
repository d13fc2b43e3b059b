"""The plan a workflow will get, before it runs: predicted peak VRAM per phase and seconds per step.

Input: the loader's settings and the job, as a query of strings (a web route's, a script's). Every
parameter is checked (``BadParameter`` names it and says why); model files are named as the host lists
them and resolved only by the host. The sizes come from the safetensors headers (``header_sizes``), the
placement from the planner the engine uses (``plan_memory``), the step time from ``step_time``; after a
run of the same model on this device, the step time is scaled by how that run compared with its own
prediction.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .budget import VRAM_BUDGETS, usable_bytes
from .devices import check_fp8_matmul, compute_dtype
from .edit import MAX_REFERENCES, MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE
from .engine import EngineOptions, plan_run
from .errors import QwenFitError
from .gpus import gpus_for
from .header_sizes import sizes_from_headers
from .host_plan import FILES, HOST_BUDGETS, HostPlan
from .job_shape import JobShape
from .layered import MAX_LAYERS, MIN_LAYERS, RESOLUTIONS
from .loading import LoadRequest, describe, fp8_mode, plan_host_memory
from .lora import LoraChoice
from .model_sizes import ModelSizes
from .planner import MemoryPlan, describe_memory_plan
from .run_record import RunRecord
from .runs import MAX_STEPS
from .settings import (
    CFG_MODES,
    FP8_FAST,
    OFFLOAD_MODES,
    PRECISIONS,
    SWITCHES,
    OffloadSettings,
    PrecisionSettings,
    VaeSettings,
)
from .sources import DiffusersFolder, PipelineSource, SourceDescription, SplitFiles
from .step_time import DeviceSpeed, StepEstimate, device_speed, estimate_step, known_device_speed
from .variants import VARIANT_CHOICES, Variant

GIB = 1024**3
JOB_KINDS = ("auto", "edit", "layered")
# Edit's automatic output size: about this many pixels at the first reference's aspect ratio.
AUTO_AREA = 1024 * 1024


@dataclass(frozen=True)
class LoadedBudget:
    """The VRAM budget the engine of an already loaded pipeline fixed at load time ("auto" reads the free
    memory once, when loading; the preview must not read it again while that pipeline holds memory)."""

    budget_bytes: int | None


class BadParameter(ValueError):
    """A query parameter that is missing, unknown or out of range; ``reason`` says what would do."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


@dataclass(frozen=True)
class ModelChoices:
    """The names the host lists (what its loader's dropdowns offer)."""

    models: tuple[str, ...]
    text_encoders: tuple[str, ...]
    vaes: tuple[str, ...]
    loras: tuple[str, ...]


@dataclass(frozen=True)
class PreviewQuery:
    """Validated settings and job for one preview."""

    model: str
    variant: str = "auto"
    text_encoder: str = "auto"
    vae: str = "auto"
    lora: str = "none"
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


# ---- parsing ------------------------------------------------------------------------------------


def _choice(params: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = params.get(name, default)
    if value not in allowed:
        shown = ", ".join(allowed) if len(allowed) <= 12 else f"one of the {len(allowed)} names the loader lists"
        raise BadParameter(name, f"{value!r} is not offered; use {shown}")
    return value


def _number(params: Mapping[str, str], name: str, kind: type, low: float, high: float, default: Any) -> Any:
    if name not in params:
        return default
    raw = params[name]
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise BadParameter(name, f"{raw!r} is not a{'n integer' if kind is int else ' number'}") from None
    if not (low <= value <= high) or (isinstance(value, float) and not math.isfinite(value)):
        raise BadParameter(name, f"{raw} is out of range; use {low} to {high}")
    return value


def _flag(params: Mapping[str, str], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise BadParameter(name, f"{raw!r} is not a switch; use 1 or 0")


QUERY_NAMES = (
    "model", "variant", "text_encoder", "vae", "lora",
    "precision_transformer", "precision_text_encoder", "precision_vae",
    "offload_mode", "vram_budget", "host_budget", "cfg_pass", "vae_tiling", "vae_slicing",
    "job", "width", "height", "aspect", "references", "layers", "resolution", "steps", "cfg_scale", "caption",
)  # fmt: skip


def parse_preview_query(params: Mapping[str, str], choices: ModelChoices) -> PreviewQuery:
    """Check every parameter of a preview request; raises ``BadParameter`` at the first wrong one."""
    unknown = sorted(set(params) - set(QUERY_NAMES))
    if unknown:
        raise BadParameter(unknown[0], f"unknown parameter; the parameters are {', '.join(QUERY_NAMES)}")
    if "model" not in params:
        raise BadParameter("model", "missing; give a model as the loader lists it")
    model = _choice(params, "model", choices.models, "")
    width = _number(params, "width", int, 0, MAX_SIZE, 0)
    height = _number(params, "height", int, 0, MAX_SIZE, 0)
    for name, value in (("width", width), ("height", height)):
        if value and (value < MIN_SIZE or value % SIZE_MULTIPLE):
            raise BadParameter(name, f"{value} is not usable; use 0 (automatic) or a multiple of {SIZE_MULTIPLE} "
                               f"from {MIN_SIZE} to {MAX_SIZE}")  # fmt: skip
    if (width == 0) != (height == 0):
        raise BadParameter("height" if width else "width", "set both width and height, or both to 0")
    try:
        precision = PrecisionSettings(
            transformer=_choice(params, "precision_transformer", PRECISIONS, "auto"),
            text_encoder=_choice(params, "precision_text_encoder", PRECISIONS, "auto"),
            vae=_choice(params, "precision_vae", PRECISIONS, "auto"),
        )
    except QwenFitError as error:
        raise BadParameter("precision_vae", str(error)) from None
    resolution = _number(params, "resolution", int, min(RESOLUTIONS), max(RESOLUTIONS), 640)
    if resolution not in RESOLUTIONS:
        raise BadParameter("resolution", f"{resolution} is not offered; Qwen-Image-Layered takes 640 or 1024")
    return PreviewQuery(
        model=model,
        variant=_choice(params, "variant", VARIANT_CHOICES, "auto"),
        text_encoder=_choice(params, "text_encoder", ("auto", *choices.text_encoders), "auto"),
        vae=_choice(params, "vae", ("auto", *choices.vaes), "auto"),
        lora=_choice(params, "lora", ("none", *choices.loras), "none"),
        precision=precision,
        offload=OffloadSettings(
            mode=_choice(params, "offload_mode", OFFLOAD_MODES, "auto"),
            vram_budget=_choice(params, "vram_budget", VRAM_BUDGETS, "auto"),
            host_budget=_choice(params, "host_budget", HOST_BUDGETS, "auto"),
            cfg=_choice(params, "cfg_pass", CFG_MODES, "batched"),
        ),
        vae_settings=VaeSettings(
            tiling=_choice(params, "vae_tiling", SWITCHES, "auto"),
            slicing=_choice(params, "vae_slicing", SWITCHES, "auto"),
        ),
        job=_choice(params, "job", JOB_KINDS, "auto"),
        width=width,
        height=height,
        aspect=_number(params, "aspect", float, 0.05, 20.0, 1.0),
        references=_number(params, "references", int, 1, MAX_REFERENCES, 1),
        layers=_number(params, "layers", int, MIN_LAYERS, MAX_LAYERS, 4),
        resolution=resolution,
        steps=_number(params, "steps", int, 0, MAX_STEPS, 0),
        cfg_scale=_number(params, "cfg_scale", float, 1.0, 20.0, 4.0),
        caption=_flag(params, "caption", False),
    )


# ---- the job ------------------------------------------------------------------------------------


def auto_size(aspect: float) -> tuple[int, int]:
    """Edit's automatic output size: about 1 megapixel at ``aspect``, sides multiples of 32
    (the rule of diffusers' ``calculate_dimensions``, which the run uses)."""
    width = math.sqrt(AUTO_AREA * aspect)
    return round(width / 32) * 32, round(width / aspect / 32) * 32


def job_shape(query: PreviewQuery, variant: Variant) -> JobShape:
    """The job the run node would give the planner (a Lightning LoRA turns CFG off, as in the run)."""
    kind = query.job if query.job != "auto" else ("layered" if variant is Variant.LAYERED else "edit")
    if (kind == "layered") != (variant is Variant.LAYERED):
        node = "LayeredDecompose" if kind == "layered" else "InstructEdit"
        needs = "Qwen-Image-Layered" if kind == "layered" else "an Edit model (2509 or 2511)"
        raise QwenFitError(f"{query.model} is {variant.value}; {node} needs {needs}. Pick another model.")
    cfg = query.cfg_scale > 1 and "lightning" not in query.lora.lower()
    if kind == "layered":
        steps = query.steps or 50
        return JobShape("layered", query.resolution, query.resolution, 0, query.layers, cfg, steps, query.caption)
    width, height = (query.width, query.height) if query.width else auto_size(query.aspect)
    return JobShape("edit", width, height, query.references, cfg=cfg, steps=query.steps or 40)


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


def _request(query: PreviewQuery, source: PipelineSource, device: torch.device) -> LoadRequest:
    # The LoRA's name only matters here (a LoRA keeps the modulation weights in memory); never opened.
    lora = None if query.lora == "none" else LoraChoice(Path(query.lora))
    return LoadRequest(source, query.variant, query.precision, query.offload, str(device), lora)


def same_pipeline(query: PreviewQuery, source: PipelineSource, request: LoadRequest) -> bool:
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


def host_plan(request: LoadRequest, desc: SourceDescription) -> HostPlan:
    """The loader's host RAM plan for ``request`` (which weights wait in memory, which in the files)."""
    device = torch.device(request.device)
    precision = request.precision
    dtypes = {part: compute_dtype(getattr(precision, part), device) for part in ("transformer", "text_encoder", "vae")}
    fp8 = {
        "transformer": fp8_mode(precision.transformer, desc.transformer),
        "text_encoder": fp8_mode(precision.text_encoder, desc.text_encoder),
    }
    return plan_host_memory(request, desc, dtypes, fp8)


# ---- the preview --------------------------------------------------------------------------------


def _plan(
    sizes: ModelSizes, job: JobShape, query: PreviewQuery, budget: int | None, host: HostPlan, device: torch.device
) -> MemoryPlan:
    # The engine's own call (PipelineEngine.plan_for), with the loader's settings.
    offload = query.offload
    gpus, _ = gpus_for(offload.gpus, offload.vram_budget, device)
    options = EngineOptions(budget, offload.mode, cfg=offload.cfg, gpus=gpus, multi_gpu=offload.multi_gpu)
    return plan_run(sizes, job, options, query.vae_settings, host.text_encoder == FILES, host.modulation == FILES)


def _calibration(
    last: RunRecord | None,
    query: PreviewQuery,
    sizes: ModelSizes,
    budget: int | None,
    host: HostPlan,
    speed: DeviceSpeed,
    device: str,
) -> tuple[float, str] | None:
    """How the last run of this model on this device compared with its own prediction (measured / predicted)."""
    if last is None or last.job is None or last.model != _model_name(query) or last.device != device:
        return None
    if last.seconds_per_step <= 0:
        return None
    plan = _plan(sizes, last.job, query, budget, host, torch.device(device))
    predicted = estimate_step(sizes, last.job, plan, speed, query.precision.transformer)
    return last.seconds_per_step / predicted.seconds, f"your last run of this model ({last.job.describe()})"


def _model_name(query: PreviewQuery) -> str:
    """The name a run record carries for this model (the loader's source name: the file or folder name)."""
    return query.model.rsplit("/", 1)[-1]


def _phase_list(plan: MemoryPlan) -> list[dict[str, Any]]:
    return [{"name": name, "peak_bytes": peak} for name, peak in plan.phase_peaks]


def preview(
    query: PreviewQuery,
    source: PipelineSource,
    device: torch.device,
    last_run: RunRecord | None = None,
    may_measure_speed: Callable[[], bool] = lambda: True,
    loaded: LoadedBudget | None = None,
) -> dict[str, Any]:
    """The preview as JSON-ready data. Raises QwenFitError when no plan can be made (the message says why
    and what would do); ``may_measure_speed`` is asked before the device's speed is first measured;
    ``loaded`` is the budget of this very pipeline when it is loaded already."""
    if FP8_FAST in (query.precision.transformer, query.precision.text_encoder):
        check_fp8_matmul(device)
    request = _request(query, source, device)
    desc, sizes = model_sizes(request)
    variant = desc.variant
    job = job_shape(query, variant)
    host = host_plan(request, desc)
    weights = {
        "transformer_bytes": sizes.transformer_bytes,
        "text_encoder_bytes": sizes.text_encoder_bytes,
        "vae_bytes": sizes.vae_bytes,
    }
    answer: dict[str, Any] = {
        "ok": True,
        "model": query.model,
        "variant": variant.value,
        "device": "no GPU: runs on the CPU" if device.type == "cpu" else str(device),
        "job": {**asdict(job), "text": job.describe()},
        "weights": weights,
        "host": {
            "budget_bytes": host.budget_bytes,
            "predicted_bytes": host.predicted_bytes,
            "text_encoder": host.text_encoder,
            "modulation": host.modulation,
            "text": host.describe(),
        },
        "notes": list(host.notes),
    }
    if query.offload.mode == "model":
        answer.update(plan=None, phases=[], predicted_peak_bytes=None, seconds_per_step=None)
        answer["notes"].append(
            "offload mode 'model' is diffusers' whole-component offload: the planner does not place it, so "
            "there is no prediction (it is also the slowest mode)."
        )
        return answer
    budget = loaded.budget_bytes if loaded is not None else usable_bytes(query.offload.vram_budget, device)
    if loaded is not None and query.offload.vram_budget == "auto" and budget is not None:
        answer["notes"].append(f"VRAM budget auto: {budget / GIB:.1f} GiB, fixed when this model loaded")
    plan = _plan(sizes, job, query, budget, host, device)
    _, fallback = gpus_for(query.offload.gpus, query.offload.vram_budget, device)
    if fallback:
        answer["notes"].append(fallback)
    answer.update(
        budget_bytes=budget,
        phases=_phase_list(plan),
        predicted_peak_bytes=plan.predicted_peak_bytes,
        pinned_bytes=plan.pinned_bytes,
        plan={
            "blocks": sizes.blocks,
            "resident_blocks": len(plan.resident_blocks),
            "streamed_blocks": len(plan.streamed_blocks),
            "slots": plan.slots,
            "text_encoder": plan.text_encoder,
            "cfg": plan.cfg,
            "vae_tiling": plan.vae_tiling,
            "vae_encode_tiling": plan.vae_encode_tiling,
            "vae_slicing": plan.vae_slicing,
            "strategy": plan.strategy,
            "gpus": [{"device": d, "peak_bytes": b} for d, b in plan.device_peaks],
            "text": describe_memory_plan(plan, sizes),
        },
    )
    if device.type == "cpu":
        answer["notes"].append("no GPU: the weights and activations live in host RAM; a VRAM budget applies on a GPU")
    step = _step_estimate(query, sizes, job, plan, device, may_measure_speed)
    if step is None:
        answer.update(seconds_per_step=None)
        answer["notes"].append("s/step: the device's speed is measured once no run holds it; ask again after the run")
        return answer
    estimate, speed = step
    answer.update(seconds_per_step=estimate.seconds, seconds_per_step_model=estimate.seconds, step_basis=estimate.basis)
    calibration = _calibration(last_run, query, sizes, budget, host, speed, str(device))
    if calibration is not None:
        factor, source_text = calibration
        answer.update(seconds_per_step=estimate.seconds * factor, calibration={"factor": factor, "from": source_text})
    return answer


def _step_estimate(
    query: PreviewQuery,
    sizes: ModelSizes,
    job: JobShape,
    plan: MemoryPlan,
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
