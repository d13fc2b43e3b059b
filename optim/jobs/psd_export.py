"""Write decomposed layers as a layered PSD (bottom layer first), never overwriting a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import QwenFitError


def layers_to_pil(rgb: torch.Tensor, alpha: torch.Tensor) -> list[Image.Image]:
    """[N,H,W,3] colours + [N,H,W] alpha (1 = opaque) -> N RGBA images."""
    rgba = torch.cat([rgb, alpha[..., None]], dim=-1).clamp(0, 1)
    array = (rgba.cpu().numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(layer, "RGBA") for layer in array]


def next_free_path(folder: Path, prefix: str, suffix: str = ".psd") -> Path:
    """``<prefix>_00001.psd`` and up: the first name not taken (the file is created by the caller with 'xb')."""
    stem = Path(prefix).name
    if not stem or stem in (".", ".."):
        raise QwenFitError(f"filename prefix {prefix!r} is not a usable file name.")
    target_dir = (folder / Path(prefix).parent).resolve()
    if not target_dir.is_relative_to(folder.resolve()):
        raise QwenFitError(f"filename prefix {prefix!r} points outside the output folder; use a plain name.")
    target_dir.mkdir(parents=True, exist_ok=True)
    for counter in range(1, 100_000):
        candidate = target_dir / f"{stem}_{counter:05d}{suffix}"
        if not candidate.exists():
            return candidate
    raise QwenFitError(f"no free file name left for {prefix!r} in {target_dir}.")


def layer_names(count: int) -> list[str]:
    """Layer names as an editor shows them, bottom first: "Layer 1 (bottom)" ... "Layer N (top)"."""
    return [f"Layer {i + 1}" + (" (bottom)" if i == 0 else " (top)" if i == count - 1 else "") for i in range(count)]


def save_layers_psd(rgb: torch.Tensor, alpha: torch.Tensor, folder: Path, prefix: str) -> str:
    """Write the layers ([N,H,W,3] colours, [N,H,W] alpha, bottom first) as a new PSD under ``folder``;
    returns a line for the report naming the file relative to ``folder``."""
    count = rgb.shape[0]
    path = write_psd(layers_to_pil(rgb, alpha), folder, prefix, layer_names(count))
    return f"PSD: {path.relative_to(folder.resolve())} ({count} layers, bottom first)"


def write_psd(layers: list[Image.Image], folder: Path, prefix: str, names: list[str] | None = None) -> Path:
    """Save ``layers`` (bottom first) as one PSD in ``folder``; returns its path. Never overwrites."""
    from psd_tools import PSDImage
    from psd_tools.api.layers import PixelLayer

    if not layers:
        raise QwenFitError("there are no layers to write.")
    size = layers[0].size
    psd = PSDImage.new("RGBA", size)
    names = names or [f"Layer {i + 1}" for i in range(len(layers))]
    for layer, name in zip(layers, names, strict=True):
        psd.append(PixelLayer.frompil(layer, psd, name))
    while True:
        path = next_free_path(folder, prefix)
        try:
            with open(path, "xb") as handle:  # "x": fail rather than replace a file that appeared meanwhile
                psd.save(handle)
            return path
        except FileExistsError:
            continue
