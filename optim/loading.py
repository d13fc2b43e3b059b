"""Load a Qwen-Image pipeline from a diffusers folder, offline, safetensors only."""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .devices import compute_dtype
from .errors import QwenFitError
from .placement import apply_placement, plan_placement, plan_vae
from .plan import Plan
from .settings import OffloadSettings, PrecisionSettings, VaeSettings
from .variants import Variant, detect_variant, resolve_variant

log = logging.getLogger("qwenfit")

_REQUIRED_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "processor")
_WEIGHT_PARTS = ("transformer", "vae", "text_encoder")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# VAE input channels per variant: the Layered VAE works on RGBA.
_VAE_CHANNELS = {Variant.EDIT_2509: 3, Variant.EDIT_2511: 3, Variant.LAYERED: 4}


@dataclass(frozen=True)
class LoadRequest:
    """Everything that decides which weights are loaded and how; equal requests share a pipeline."""

    folder: Path
    variant: str = "auto"
    precision: PrecisionSettings = PrecisionSettings()
    offload: OffloadSettings = OffloadSettings()
    device: str = "cpu"


@dataclass
class LoadedPipeline:
    """A loaded diffusers pipeline with what the pack knows about it."""

    pipeline: Any
    variant: Variant
    plan: Plan
    request: LoadRequest

    @property
    def name(self) -> str:
        return self.request.folder.name

    @property
    def device(self) -> torch.device:
        return torch.device(self.request.device)

    def with_vae(self, vae: VaeSettings) -> "LoadedPipeline":
        """A view of the same pipeline whose plan carries these VAE settings (no copy of weights)."""
        plan = plan_vae(self.plan, vae, is_layered=self.variant is Variant.LAYERED)
        return replace(self, plan=plan)


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


def load_pipeline(request: LoadRequest) -> LoadedPipeline:
    """Load and place a pipeline as ``request`` says. Nothing is downloaded; only safetensors are read.

    On failure everything partly loaded is released before the error propagates.
    """
    from diffusers import QwenImageEditPlusPipeline, QwenImageLayeredPipeline

    variant, _ = inspect_folder(request.folder)
    variant = resolve_variant(variant, request.variant, f"model folder '{request.folder.name}'")
    device = torch.device(request.device)
    dtypes = {
        "transformer": compute_dtype(request.precision.transformer, device),
        "text_encoder": compute_dtype(request.precision.text_encoder, device),
        "vae": compute_dtype(request.precision.vae, device),
        "default": torch.float32,
    }
    pipeline_cls = QwenImageLayeredPipeline if variant is Variant.LAYERED else QwenImageEditPlusPipeline
    pipeline = None
    try:
        pipeline = pipeline_cls.from_pretrained(
            str(request.folder), dtype=dtypes, local_files_only=True, use_safetensors=True
        )
        pipeline.set_progress_bar_config(disable=True)
        plan = plan_placement(pipeline, device, request.offload)
        apply_placement(pipeline, plan, device)
    except QwenFitError:
        del pipeline
        release_memory()
        raise
    except Exception as exc:  # a corrupt file, a wrong shape: tell the user which folder
        del pipeline
        release_memory()
        raise QwenFitError(
            f"model folder '{request.folder.name}' could not be loaded: {type(exc).__name__}: {exc}. "
            "The files may be truncated or from another model; re-copy the folder."
        ) from exc
    log.info("%s", plan.describe())
    return LoadedPipeline(pipeline=pipeline, variant=variant, plan=plan, request=request)


def release_memory() -> None:
    """Collect garbage and return cached GPU blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
