"""Load a Qwen-Image pipeline from a diffusers folder, offline, safetensors only."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .architectures import processor as arch_processor
from .architectures import scheduler as arch_scheduler
from .assemble import (
    FP8_ALL,
    FP8_AS_STORED,
    FP8_NONE,
    build_text_encoder,
    build_transformer,
    build_vae,
    is_modulation_key,
    is_text_unit_key,
    text_encoder_fp8_filter,
    transformer_fp8_filter,
)
from .budget import usable_bytes
from .devices import check_fp8_matmul, compute_dtype
from .engine import EngineOptions, PipelineEngine
from .errors import QwenFitError
from .gpus import gpus_for
from .host_plan import FILES, HostPlan, HostWeights, estimate_component, host_budget_bytes, plan_host
from .lora import LoraChoice, lightning_scheduler_config
from .placement import apply_placement, plan_placement, plan_vae
from .plan import Plan
from .quantized_linear import QUANTIZED, quantize_linears
from .settings import FP8, FP8_FAST, OffloadSettings, PrecisionSettings, VaeSettings
from .sources import DiffusersFolder, PipelineSource, SourceDescription, describe_folder, describe_split_files
from .variants import Variant, detect_variant

log = logging.getLogger("qwenfit")

_REQUIRED_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "processor")
_WEIGHT_PARTS = ("transformer", "vae", "text_encoder")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# VAE input channels per variant: the Layered VAE works on RGBA.
_VAE_CHANNELS = {Variant.EDIT_2509: 3, Variant.EDIT_2511: 3, Variant.LAYERED: 4}


@dataclass(frozen=True)
class LoadRequest:
    """Everything that decides which weights are loaded and how; equal requests share a pipeline."""

    source: PipelineSource
    variant: str = "auto"
    precision: PrecisionSettings = PrecisionSettings()
    offload: OffloadSettings = OffloadSettings()
    device: str = "cpu"
    lora: LoraChoice | None = None


@dataclass
class LoadedPipeline:
    """A loaded diffusers pipeline with what the pack knows about it."""

    pipeline: Any
    variant: Variant
    plan: Plan
    request: LoadRequest
    engine: PipelineEngine | None = None  # None when diffusers' whole-model offload places the weights
    vae: VaeSettings = VaeSettings()
    host: HostPlan | None = None

    @property
    def name(self) -> str:
        return self.request.source.name

    @property
    def device(self) -> torch.device:
        return torch.device(self.request.device)

    @property
    def lightning(self) -> LoraChoice | None:
        """The Lightning LoRA merged into this pipeline, if any (runs then use CFG off)."""
        lora = self.request.lora
        return lora if lora is not None and lora.is_lightning else None

    def with_vae(self, vae: VaeSettings) -> LoadedPipeline:
        """A view of the same pipeline whose runs use these VAE settings (no copy of weights)."""
        plan = plan_vae(self.plan, vae, is_layered=self.variant is Variant.LAYERED)
        return replace(self, plan=plan, vae=vae)


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
            pickles = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
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


def fp8_mode(choice: str, source: Any) -> str:
    """fp8 storage for a component: asked for explicitly, or "auto" on an fp8 file (expanding it would
    double its memory for no gain in fidelity; layers the file keeps dense stay dense)."""
    if choice == FP8:
        return FP8_ALL
    if choice == "auto" and source.holds_fp8():
        return FP8_AS_STORED
    return FP8_NONE


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


def _stays_in_files(kind: str, fp8: str) -> bool:
    """A component's weights can be read back from its files when the plan stores them as the files
    do (or as a plain cast): not when they are quantized on load."""
    return kind not in QUANTIZED and fp8 in (FP8_NONE, FP8_AS_STORED)


def plan_host_memory(
    request: LoadRequest, desc: SourceDescription, dtypes: dict[str, torch.dtype], fp8: dict[str, str]
) -> HostPlan:
    """Which once-per-run weights wait in host memory, estimated from the files' headers."""
    precision = request.precision
    transformer = estimate_component(
        desc.transformer,
        fp8["transformer"],
        precision.transformer,
        lambda key: "transformer_blocks." in key,
        dtypes["transformer"].itemsize,
        {"modulation": lambda key: ".img_mod." in key or ".txt_mod." in key},
    )
    text = estimate_component(
        desc.text_encoder,
        fp8["text_encoder"],
        precision.text_encoder,
        lambda key: ".layers." in key and "visual" not in key,
        dtypes["text_encoder"].itemsize,
        {"units": lambda key: "visual.blocks." in key or ".layers." in key},
    )
    engine_places = request.offload.mode != "model"  # diffusers' own offload moves whole modules
    weights = HostWeights(
        transformer=transformer["all"],
        modulation=transformer["modulation"],
        text_encoder=text["all"],
        text_units=text["units"],
        vae=desc.vae.nbytes,
        text_encoder_can_stay_in_files=engine_places and _stays_in_files(precision.text_encoder, fp8["text_encoder"]),
        modulation_can_stay_in_files=engine_places
        and request.lora is None
        and _stays_in_files(precision.transformer, fp8["transformer"]),
    )
    return plan_host(weights, host_budget_bytes(request.offload.host_budget))


def _build(request: LoadRequest, desc: SourceDescription, host: HostPlan, checkpoint: Callable[[str], None]) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline, QwenImageLayeredPipeline
    from transformers import Qwen2_5_VLConfig, Qwen2Tokenizer, Qwen2VLProcessor

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
    transformer = build_transformer(
        desc.transformer,
        desc.architecture,
        desc.folder_config("transformer"),
        desc.variant,
        dtypes["transformer"],
        home,
        fp8=transformer_fp8,
        lora=request.lora,
        keep_in_files=is_modulation_key if host.modulation == FILES else None,
    )
    checkpoint("load")
    text_encoder = build_text_encoder(
        desc.text_encoder,
        desc.architecture,
        te_config,
        dtypes["text_encoder"],
        home,
        fp8=text_encoder_fp8,
        keep_in_files=is_text_unit_key if host.text_encoder == FILES else None,
    )
    if FP8_FAST in (precision.transformer, precision.text_encoder):
        check_fp8_matmul(device)
    for part, module, keep in (
        ("transformer", transformer, transformer_fp8_filter),
        ("text_encoder", text_encoder, text_encoder_fp8_filter),
    ):
        kind = getattr(precision, part)
        if kind in QUANTIZED:  # weight-only integer formats: quantized layer by layer after loading
            quantize_linears(module, kind, keep)
    checkpoint("load")
    vae = build_vae(desc.vae, desc.architecture, desc.folder_config("vae"), desc.vae_channels, dtypes["vae"], home)
    tokenizer = Qwen2Tokenizer.from_pretrained(str(desc.tokenizer_dir), local_files_only=True)
    if folder is not None:
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler"), local_files_only=True)
        proc = Qwen2VLProcessor.from_pretrained(str(folder / "processor"), local_files_only=True)
    else:
        scheduler, proc = arch_scheduler(desc.architecture), arch_processor(desc.architecture, tokenizer)
    if request.lora is not None and request.lora.is_lightning:
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(lightning_scheduler_config(dict(scheduler.config)))
    pipeline_cls = QwenImageLayeredPipeline if desc.variant is Variant.LAYERED else QwenImageEditPlusPipeline
    return pipeline_cls(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=proc,
        transformer=transformer,
    )


def _marking(checkpoint: Callable[[str], None] | None) -> Callable[[str], None]:
    """``checkpoint`` whose exceptions are marked, so a cancel is re-raised as it is, not as a bad file."""

    def check(phase: str) -> None:
        if checkpoint is None:
            return
        try:
            checkpoint(phase)
        except BaseException as cancel:
            cancel.qwenfit_cancel = True  # type: ignore[attr-defined]
            raise

    return check


def load_pipeline(request: LoadRequest, checkpoint: Callable[[str], None] | None = None) -> LoadedPipeline:
    """Load and place a pipeline as ``request`` says, one tensor at a time, straight into the
    planned dtype. Nothing is downloaded; only safetensors are read (never pickles).

    ``checkpoint("load")`` is called between components; raising from it (ComfyUI's Cancel) stops
    the load. On failure or cancel everything partly loaded is released before the error propagates.
    """
    desc = describe(request)
    device = torch.device(request.device)
    pipeline = None
    try:
        host = plan_host_memory(request, desc, _compute_dtypes(request), _fp8_modes(request, desc))
        check = _marking(checkpoint)
        check("load")
        pipeline = _build(request, desc, host, check)
        pipeline.set_progress_bar_config(disable=True)
        plan = plan_placement(pipeline, device, request.offload)
        engine = None
        if request.offload.mode == "model":
            apply_placement(pipeline, plan, device)
        else:
            offload = request.offload
            budget = usable_bytes(offload.vram_budget, device)
            gpus, fallback = gpus_for(offload.gpus, offload.vram_budget, device)
            if fallback:
                plan = replace(plan, notes=(*plan.notes, fallback))
            options = EngineOptions(budget, offload.mode, cfg=offload.cfg, gpus=gpus, multi_gpu=offload.multi_gpu)
            engine = PipelineEngine(pipeline, device, options, host)
    except QwenFitError:
        pipeline = None
        release_memory()
        raise
    except Exception as exc:  # a corrupt file, a wrong shape: tell the user which model
        pipeline = None
        release_memory()
        if getattr(exc, "qwenfit_cancel", False):
            raise
        raise QwenFitError(
            f"'{request.source.name}' could not be loaded: {type(exc).__name__}: {exc}. The files may be "
            "truncated or from another model; re-copy or download them again."
        ) from exc
    log.info("%s\n%s", plan.describe(), host.describe())
    return LoadedPipeline(pipeline=pipeline, variant=desc.variant, plan=plan, request=request, engine=engine, host=host)


def release_memory() -> None:
    """Collect garbage and return cached GPU blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
