"""Where a module's tensors sit inside one flat byte buffer, and pointing the module at a buffer.

A streamed block owns no memory of its own: its parameters and buffers are views into either its
slice of the host arena or a GPU slot. Re-pointing is a few dozen attribute writes, far cheaper
than the block's compute, and needs no hooks or module copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# Offsets are aligned so every dtype view of a slice is legal and copies stay fast.
ALIGNMENT = 512


@dataclass(frozen=True)
class TensorPlace:
    """One tensor of a module: its owner, attribute name, kind, dtype, shape and byte range."""

    owner: nn.Module
    name: str
    is_parameter: bool
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class ModuleLayout:
    """All streamed tensors of one module and the bytes they need."""

    places: tuple[TensorPlace, ...]
    nbytes: int


def _aligned(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def layout_of(module: nn.Module, skip: Callable[[str], bool] = lambda name: False) -> ModuleLayout:
    """The layout of every parameter and buffer under ``module`` whose dotted name ``skip`` does not reject."""
    places, offset = [], 0
    for prefix, owner in module.named_modules():
        for is_parameter, tensors in ((True, owner._parameters), (False, owner._buffers)):
            for name, tensor in tensors.items():
                full = f"{prefix}.{name}" if prefix else name
                if tensor is None or skip(full):
                    continue
                nbytes = tensor.numel() * tensor.element_size()
                places.append(TensorPlace(owner, name, is_parameter, tensor.dtype, tuple(tensor.shape), offset, nbytes))
                offset += _aligned(nbytes)
    return ModuleLayout(tuple(places), offset)


def _current(place: TensorPlace) -> torch.Tensor:
    """The tensor holding the place's values now: for a Parameter its ``.data``, a new alias of the
    storage, so re-pointing the Parameter later does not change what was returned here."""
    if place.is_parameter:
        return place.owner._parameters[place.name].data
    return place.owner._buffers[place.name]


def current_tensors(layout: ModuleLayout) -> list[torch.Tensor]:
    """Aliases of the module's tensors as they are now (to bind them back later)."""
    return [_current(p) for p in layout.places]


def _set(place: TensorPlace, tensor: torch.Tensor) -> None:
    if place.is_parameter:
        # Re-pointing .data keeps the Parameter object (and anything holding it) valid.
        place.owner._parameters[place.name].data = tensor
    else:
        place.owner._buffers[place.name] = tensor


def views(layout: ModuleLayout, base: torch.Tensor) -> list[torch.Tensor]:
    """Typed views of ``base`` (a uint8 tensor) for every place of ``layout``."""
    return [base[p.offset : p.offset + p.nbytes].view(p.dtype).view(p.shape) for p in layout.places]


def bind(layout: ModuleLayout, tensors: list[torch.Tensor]) -> None:
    """Point the module's tensors at ``tensors`` (views made by :func:`views`)."""
    for place, tensor in zip(layout.places, tensors, strict=True):
        _set(place, tensor)
