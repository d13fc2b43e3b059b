"""Prompt embeddings cached by (prompt, reference images), so a new seed does not re-encode.

The cache wraps the pipeline's own ``encode_prompt`` (instance attribute, the class is untouched)
and hands out the very same tensors for equal inputs; the engine pairs the prompt's and negative
prompt's tensors of a run for batched CFG.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from PIL import Image

MAX_ENTRIES = 16


def _image_digest(image: Any) -> str:
    if image is None:
        return "-"
    images = image if isinstance(image, list | tuple) else [image]
    digest = hashlib.sha256()
    for item in images:
        if isinstance(item, Image.Image):
            digest.update(f"{item.mode}{item.size}".encode())
            digest.update(item.tobytes())
        else:  # a tensor or array: shape and bytes
            data = item.detach().cpu().contiguous() if hasattr(item, "detach") else item
            digest.update(str(tuple(data.shape)).encode())
            digest.update(data.numpy().tobytes() if hasattr(data, "numpy") else bytes(data))
    return digest.hexdigest()


class PromptCache:
    """An LRU of encode_prompt results; :attr:`encoded_this_run` lists what a run asked for, in order."""

    def __init__(
        self,
        encode: Callable[..., Any],
        around_encode: Callable[[], Any] | None = None,
        on_encoded: Callable[[list[Any]], None] | None = None,
    ) -> None:
        self._encode = encode
        self._around = around_encode
        self._on_encoded = on_encoded  # called with this run's results after every request
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self.encoded_this_run: list[Any] = []
        self.hits = 0
        self.misses = 0

    def begin_run(self) -> None:
        self.encoded_this_run = []

    def clear(self) -> None:
        self._entries.clear()
        self.encoded_this_run = []

    def __call__(self, prompt: Any = None, **kwargs: Any) -> Any:
        if kwargs.get("prompt_embeds") is not None:  # the caller brought its own embeddings
            return self._encode(prompt=prompt, **kwargs)
        key = (
            repr(prompt),
            _image_digest(kwargs.get("image")),
            kwargs.get("num_images_per_prompt", 1),
            kwargs.get("max_sequence_length"),
            str(kwargs.get("device")),
        )
        result = self._entries.get(key)
        if result is None:
            self.misses += 1
            if self._around is not None:
                with self._around():
                    result = self._encode(prompt=prompt, **kwargs)
            else:
                result = self._encode(prompt=prompt, **kwargs)
            self._entries[key] = result
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        self.encoded_this_run.append(result)
        if self._on_encoded is not None:
            self._on_encoded(self.encoded_this_run)
        return result
