"""What the loader offers and what a choice means on disk, given the host's model folders.

The host (ComfyUI) names its folders per kind; everything else (which files are listed first, what
"auto" picks, that a diffusers folder brings its own text encoder and VAE) is decided here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..errors import QwenFitError
from .gguf_text_encoder import is_mmproj
from .lora import NO_LORAS, LoraChoice, LoraStack
from .model_folders import list_pipeline_folders, resolve_pipeline_folder
from .sources import DiffusersFolder, PipelineSource, SplitFiles, transformer_variant
from .weight_files import (
    AUTO,
    STANDARD_TEXT_ENCODERS,
    STANDARD_TRANSFORMERS,
    STANDARD_VAES,
    TEXT_ENCODER_HINTS,
    TEXT_ENCODER_SUFFIXES,
    TRANSFORMER_SUFFIXES,
    VAE_HINTS,
    list_weight_files,
    pick_default,
    resolve_weight_file,
)

# The host's folders of one kind ("diffusion_models", "diffusers", "text_encoders", "vae", "loras").
ModelRoots = Callable[[str], Sequence[str]]


def model_names(roots: ModelRoots) -> list[str]:
    """Transformer files from diffusion_models (Comfy-Org's names first: the default is the first one
    present), then diffusers folders."""
    transformers = list_weight_files(roots("diffusion_models"), STANDARD_TRANSFORMERS, TRANSFORMER_SUFFIXES)
    return transformers + list_pipeline_folders(roots("diffusers"))


def text_encoder_names(roots: ModelRoots) -> list[str]:
    """Text-encoder files in the host's text_encoders folders, Comfy-Org's names first; GGUF ones too (refused
    with the fix when chosen), but not their vision projectors (mmproj), which are no text encoder alone."""
    names = list_weight_files(roots("text_encoders"), STANDARD_TEXT_ENCODERS, TEXT_ENCODER_SUFFIXES)
    return [name for name in names if not is_mmproj(name)]


def vae_names(roots: ModelRoots) -> list[str]:
    """VAE files in the host's vae folders."""
    return list_weight_files(roots("vae"))


def lora_names(roots: ModelRoots) -> list[str]:
    """LoRA files in the host's loras folders."""
    return list_weight_files(roots("loras"))


def is_weight_file(model: str) -> bool:
    """A model choice naming a weight file (the others are diffusers folders)."""
    return model.lower().endswith(TRANSFORMER_SUFFIXES)


def source_from_names(
    roots: ModelRoots, model: str, text_encoder: str, vae: str, tokenizer_dir: Path
) -> PipelineSource:
    """Resolve the loader's three choices to files, through the host's model folders only."""
    if not is_weight_file(model):
        if text_encoder != AUTO or vae != AUTO:
            raise QwenFitError(
                f"'{model}' is a diffusers folder, which brings its own text encoder and VAE: set text_encoder and "
                "vae to auto, or pick a transformer file from diffusion_models to combine with separate files."
            )
        return DiffusersFolder(resolve_pipeline_folder(roots("diffusers"), model))
    transformer = resolve_weight_file(roots("diffusion_models"), model, "diffusion_models", TRANSFORMER_SUFFIXES)
    if text_encoder == AUTO:
        text_encoder = pick_default(
            list_weight_files(roots("text_encoders")),
            STANDARD_TEXT_ENCODERS,
            TEXT_ENCODER_HINTS,
            "Qwen2.5-VL text encoder",
            "text_encoders",
        )
    if vae == AUTO:
        variant = transformer_variant(transformer)
        vae = pick_default(
            list_weight_files(roots("vae")), STANDARD_VAES[variant], VAE_HINTS[variant], f"{variant.value} VAE", "vae"
        )
    return SplitFiles(
        transformer=transformer,
        text_encoder=resolve_weight_file(roots("text_encoders"), text_encoder, "text_encoders", TEXT_ENCODER_SUFFIXES),
        vae=resolve_weight_file(roots("vae"), vae, "vae"),
        tokenizer=tokenizer_dir,
    )


def lora_from_name(roots: ModelRoots, lora: str, strength: float) -> LoraChoice | None:
    """The LoRA choice ("none" or a file in the loras folders) at ``strength``."""
    return None if lora == "none" else LoraChoice(resolve_weight_file(roots("loras"), lora, "loras"), float(strength))


def lora_stack_from_names(roots: ModelRoots, loras: Iterable[tuple[str, float]]) -> LoraStack:
    """The stack of ``(name, strength)`` choices in order ("none" entries left out)."""
    stack = NO_LORAS
    for name, strength in loras:
        choice = lora_from_name(roots, name, strength)
        if choice is not None:
            stack = stack.plus(choice)
    return stack
