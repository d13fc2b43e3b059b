"""The references' VAE encodings cached by their input, so a new seed or prompt does not encode them again.

Edit and Layered runs encode each reference with the VAE before denoising (Edit resizes it to about 1 megapixel
first). In ComfyUI's own graphs a VAE Encode node's output is cached between prompts; this gives our nodes the
same. The cache wraps the pipeline's VAE ``encode`` (an instance attribute; the class is untouched) and hands out
the very same output for an equal input: same values, shape, dtype and device, with the same tiling and slicing.
The pipelines take the distribution's mode (``sample_mode="argmax"``), so a reused encoding is exact.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

# A 1 MP reference's encoding is 2 MiB in float32 (mean and log-variance): a few stay for the next runs.
MAX_ENTRIES = 8


def _digest(pixels: torch.Tensor) -> str:
    """The input's values as bytes, whatever its dtype (bfloat16 has no numpy twin)."""
    flat = pixels.detach().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).cpu().numpy().tobytes()).hexdigest()


class ReferenceLatents:
    """An LRU of the VAE's encodings; counts what the current run reused."""

    def __init__(self, encode: Callable[..., Any], vae: Any) -> None:
        self._encode = encode
        self._vae = vae
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self.reused_this_run = 0
        self.encoded_this_run = 0

    def begin_run(self) -> None:
        self.reused_this_run = self.encoded_this_run = 0

    def clear(self) -> None:
        """Forget every encoding (they may sit on a GPU that is being given back)."""
        self._entries.clear()

    def __call__(self, pixels: torch.Tensor, return_dict: bool = True) -> Any:
        # Tiling and slicing change the latents (tiles are blended), so they are part of the question.
        tiling = (getattr(self._vae, "use_tiling", False), getattr(self._vae, "use_slicing", False))
        key = (_digest(pixels), tuple(pixels.shape), pixels.dtype, str(pixels.device), tiling, return_dict)
        found = self._entries.get(key)
        if found is None:
            self.encoded_this_run += 1
            found = self._encode(pixels, return_dict=return_dict)
            self._entries[key] = found
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)
        else:
            self.reused_this_run += 1
            self._entries.move_to_end(key)
        return found

    def summary(self) -> str:
        """What the last run did with its references ("" when it encoded every one)."""
        if not self.reused_this_run:
            return ""
        return (
            f"reference latents: {self.reused_this_run} reused from an earlier run (same image and VAE settings), "
            f"{self.encoded_this_run} encoded"
        )
