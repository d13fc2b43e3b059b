"""Conversions between ComfyUI-style image tensors ([B,H,W,C] floats in 0..1) and PIL."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import QwenFitError

# Larger inputs are refused before they reach the VAE (the pipelines resize to ~1 MP anyway).
MAX_SIDE = 8192
MIN_SIDE = 8


def check_image_batch(images: torch.Tensor, what: str) -> None:
    """Refuse anything that is not a finite [B,H,W,C] image batch with 1, 3 or 4 channels."""
    if not isinstance(images, torch.Tensor):
        raise QwenFitError(f"{what} must be an IMAGE, got {type(images).__name__}; connect an image output.")
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise QwenFitError(
            f"{what} must be an IMAGE of shape [batch, height, width, 1/3/4 channels], got {list(images.shape)}; "
            "connect an image (Load Image), not a mask or latent."
        )
    batch, height, width, _ = images.shape
    if batch == 0:
        raise QwenFitError(f"{what} is an empty batch; connect at least one image.")
    if min(height, width) < MIN_SIDE or max(height, width) > MAX_SIDE:
        raise QwenFitError(
            f"{what} is {width}x{height}; QwenFit takes images from {MIN_SIDE} to {MAX_SIDE} pixels a side. "
            "Resize it first (Upscale Image node)."
        )
    if not torch.isfinite(images).all():
        raise QwenFitError(f"{what} contains NaN or infinite values; check the node that produced it.")


def check_one_image(images: torch.Tensor, node: str) -> None:
    """Refuse a batch of several images where a node runs one (diffusers 0.42 groups the layers of a
    Layered batch wrongly; one image per run is what works)."""
    if images.ndim == 4 and images.shape[0] > 1:
        raise QwenFitError(
            f"{node} takes one image, got a batch of {images.shape[0]}. Pick one with 'Image From Batch' "
            "(or run the images one by one)."
        )


def tensor_to_pil(image: torch.Tensor, mode: str) -> Image.Image:
    """One [H,W,C] float image to PIL in ``mode`` ("RGB" or "RGBA"); gray is expanded, alpha added or dropped."""
    array = (image.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    channels = array.shape[-1]
    if channels == 1:
        array = np.repeat(array, 3, axis=-1)
    pil = Image.fromarray(array, "RGBA" if channels == 4 else "RGB")
    return pil.convert(mode)


def with_alpha_from_mask(image: Image.Image, mask: torch.Tensor) -> Image.Image:
    """Attach a ComfyUI MASK (1 = transparent, as Load Image gives it) as the image's alpha.

    A mask of another size is stretched to the image, as ComfyUI's own nodes do (Load Image
    gives a 64x64 empty mask for pictures without alpha).
    """
    if mask.ndim == 3:
        mask = mask[0]
    if mask.ndim != 2 or not torch.isfinite(mask).all():
        raise QwenFitError("mask must be a finite [height, width] MASK; connect the MASK output of Load Image.")
    mask = mask.detach().float().clamp(0, 1).cpu()
    if tuple(mask.shape) != (image.height, image.width):
        mask = torch.nn.functional.interpolate(
            mask[None, None], size=(image.height, image.width), mode="bilinear", align_corners=False
        )[0, 0]
    alpha = ((1.0 - mask).numpy() * 255.0).round().astype(np.uint8)
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return rgba


def numpy_to_tensor(images: np.ndarray) -> torch.Tensor:
    """A [N,H,W,C] float array in 0..1 (diffusers' "np" output) as a contiguous float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).clamp(0, 1)
