"""Turn ComfyUI IMAGE/MASK inputs into the PIL images the core takes."""

from __future__ import annotations

import torch
from PIL import Image

from ..optim import check_image_batch, tensor_to_pil


def images_from_batches(named_batches: list[tuple[str, torch.Tensor | None]], mode: str = "RGB") -> list[Image.Image]:
    """Every image of every connected batch, in socket order (a batch of 2 counts as 2 images)."""
    images = []
    for name, batch in named_batches:
        if batch is None:
            continue
        check_image_batch(batch, name)
        images.extend(tensor_to_pil(item, mode) for item in batch)
    return images
