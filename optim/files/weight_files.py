"""Split weight files in ComfyUI's model folders: listing, sensible defaults, safe resolution."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import QwenFitError
from ..qwen.variants import Variant
from .safetensors_file import PICKLE_SUFFIXES

WEIGHT_SUFFIXES = (".safetensors",)
TRANSFORMER_SUFFIXES = (".safetensors", ".gguf")  # ComfyUI-GGUF's transformer files too
# ComfyUI-GGUF's text encoders are listed so that choosing one says what to use instead (gguf_text_encoder.py).
TEXT_ENCODER_SUFFIXES = (".safetensors", ".gguf")
AUTO = "auto"

# Comfy-Org's file names, best first; "auto" picks the first one present.
STANDARD_TRANSFORMERS = (
    "qwen_image_edit_2511_fp8mixed.safetensors",
    "qwen_image_edit_2509_fp8_e4m3fn.safetensors",
    "qwen_image_edit_2509_fp8mixed.safetensors",
    "qwen_image_edit_2511_bf16.safetensors",
    "qwen_image_edit_2509_bf16.safetensors",
    "qwen_image_layered_fp8mixed.safetensors",
    "qwen_image_layered_bf16.safetensors",
    "firered_image_edit_1.0_bf16.safetensors",
)
STANDARD_TEXT_ENCODERS = ("qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_2.5_vl_7b.safetensors")
STANDARD_VAES = {
    Variant.LAYERED: ("qwen_image_layered_vae.safetensors",),
    Variant.EDIT_2509: ("qwen_image_vae.safetensors",),
    Variant.EDIT_2511: ("qwen_image_vae.safetensors",),
}
# When no standard name is there, a file whose name holds one of these is taken.
TEXT_ENCODER_HINTS = ("qwen_2.5_vl", "qwen2.5_vl", "qwen25_vl", "qwen2.5-vl")
VAE_HINTS = {
    Variant.LAYERED: ("layered_vae",),
    Variant.EDIT_2509: ("qwen_image_vae", "qwen_vae"),
    Variant.EDIT_2511: ("qwen_image_vae", "qwen_vae"),
}


def list_weight_files(
    roots: Iterable[str | os.PathLike], preferred: tuple[str, ...] = (), suffixes: tuple[str, ...] = WEIGHT_SUFFIXES
) -> list[str]:
    """Relative names ('/'-separated) of every weight file (``suffixes``) under ``roots``: ``preferred`` names
    first (in their order), then other Qwen files, then the rest."""
    names: set[str] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in filenames:
                if filename.lower().endswith(suffixes):
                    names.add((Path(dirpath) / filename).relative_to(root).as_posix())
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(names, key=lambda n: (rank.get(Path(n).name, len(rank)), "qwen" not in n.lower(), n.lower()))


def resolve_weight_file(
    roots: Iterable[str | os.PathLike], name: str, folder_kind: str, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES
) -> Path:
    """The file listed under ``name``; pickles and anything outside the roots are refused."""
    roots = [Path(r) for r in roots]
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise QwenFitError(
            f"{name} is a pickle file; QwenFit never loads pickles because they can run code. "
            "Use the .safetensors release of this model."
        )
    if name in list_weight_files(roots, suffixes=suffixes):
        for root in roots:
            candidate = root / name
            if candidate.is_file():
                return candidate
    raise QwenFitError(
        f"{name!r} is not a {' or '.join(suffixes)} file in models/{folder_kind}. Put the file there, refresh the page "
        "(press R) and pick it."
    )


def pick_default(
    names: list[str], standard: tuple[str, ...], hints: tuple[str, ...], what: str, folder_kind: str
) -> str:
    """The standard file when present, else the first whose name carries a hint."""
    basenames = {Path(n).name: n for n in names}
    for wanted in standard:
        if wanted in basenames:
            return basenames[wanted]
    for name in names:
        if any(h in Path(name).name.lower() for h in hints):
            return name
    raise QwenFitError(
        f"no {what} found in models/{folder_kind}: put {standard[0]} there (Comfy-Org's repackaged files), "
        "or pick a file on the loader."
    )
