"""LoRAs applied as each Linear layer runs: ``y = layer(x) + ((x @ down.T) * scale) @ up.T``.

The base weights are never modified, so adding, removing or re-weighting a LoRA never reloads them,
and the update works on every weight format (bf16, fp8, int8, nf4, the 8-bit products) alike. A
layer's stack of LoRAs is one ``down`` (sum of ranks x in) and one ``up`` (out x sum of ranks) per
device, with one ``scale`` per rank row (strength * alpha / rank): a new strength rewrites only
``scale``.

Per call the cheaper of two exact forms is taken, from the shapes: for many tokens
(tokens * (in + out) > in * out) a layer that computes from a dense weight adds ``up @ down`` to it
(one small matmul per call, the weight's own matmul unchanged); for few tokens, or a layer
multiplying in 8 bits (no dense weight), the two thin products are added to the output.

The state sits on the layer object (its class gains ``WithLowRank``), not on its weight tensors: the
block streamer re-points weights every step and the update must survive that. Plain attributes
and shape-based branches keep a compiled block function valid for every block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .compressed_linear import CompressedLinear
from .low_precision import supports


@dataclass(frozen=True)
class LowRankFactors:
    """One layer's stacked LoRA factors on one device, in the compute dtype."""

    down: torch.Tensor  # [R, in]
    up: torch.Tensor  # [out, R]
    scale: torch.Tensor  # [R]: strength * alpha / rank of the LoRA each row belongs to

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.down, self.up, self.scale))


def merge_is_cheaper(tokens: int, in_features: int, out_features: int) -> bool:
    """Adding ``up @ down`` to a dense weight (in * out * R multiply-adds) beats the two thin products
    (tokens * (in + out) * R) when the call has many tokens."""
    return tokens * (in_features + out_features) > in_features * out_features


class WithLowRank:
    """Mixed into a Linear layer's class while a LoRA stack changes it (see :func:`attach_low_rank`)."""

    low_rank: tuple[LowRankFactors, ...]  # one per device the layer may compute on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factors = self.low_rank[0]
        for candidate in self.low_rank[1:]:  # the copy on the device this call computes on
            if candidate.down.device == x.device:
                factors = candidate
        # Factors kept on the host (the modulation layers') come over for the call; elsewhere a no-op.
        down, up = factors.down.to(x.device, x.dtype), factors.up.to(x.device, x.dtype)
        scale = factors.scale.to(x.device)
        dense = _dense_weight_source(self)
        if dense is not None and merge_is_cheaper(x.numel() // x.shape[-1], self.in_features, self.out_features):
            # The scales multiply in float32 (a strength like 0.35 is not a bf16 number).
            weight = torch.addmm(dense(x.dtype), (up * scale).to(x.dtype), down)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return nn.functional.linear(x, weight, bias)
        out = super().forward(x)
        return out + nn.functional.linear((nn.functional.linear(x, down) * scale).to(x.dtype), up)


@contextmanager
def low_rank_on(layers: Iterable[nn.Module], device: torch.device) -> Iterator[None]:
    """Within: the LoRA factors of ``layers`` that are kept on another device (the modulation layers', on
    the host) are copied to ``device`` once, for every call inside, instead of at each call."""
    saved = []
    for layer in layers:
        if isinstance(layer, WithLowRank) and all(f.down.device != device for f in layer.low_rank):
            f = layer.low_rank[0]
            saved.append((layer, layer.low_rank))
            layer.low_rank = (LowRankFactors(f.down.to(device), f.up.to(device), f.scale.to(device)),)
    try:
        yield
    finally:
        for layer, factors in saved:
            layer.low_rank = factors


def _dense_weight_source(layer: nn.Module):
    """How ``layer`` gets the dense weight its forward multiplies by, or None when it multiplies without
    one (8-bit products)."""
    if isinstance(layer, CompressedLinear):
        if layer.fast and supports(layer.in_features, layer.out_features):
            return None
        return layer.dequantized_weight
    return lambda dtype: layer.weight.to(dtype)


_WITH: dict[type, type] = {}  # layer class -> the same class with WithLowRank
_BASE: dict[type, type] = {}


def _with_low_rank(cls: type) -> type:
    if cls not in _WITH:
        _WITH[cls] = type(f"{cls.__name__}WithLoRA", (WithLowRank, cls), {"__module__": __name__})
        _BASE[_WITH[cls]] = cls
    return _WITH[cls]


def is_lora_target(layer: nn.Module) -> bool:
    """A layer a LoRA can change: a Linear in any weight format."""
    return isinstance(layer, nn.Linear | CompressedLinear)


def attach_low_rank(layer: nn.Module, factors: tuple[LowRankFactors, ...]) -> None:
    """Make ``layer`` add ``factors`` (one per device it may compute on) to its output from now on."""
    if not factors:
        raise ValueError("attach_low_rank needs factors on at least one device")
    if not isinstance(layer, WithLowRank):
        layer.__class__ = _with_low_rank(type(layer))
    layer.low_rank = factors


def detach_low_rank(layer: nn.Module) -> None:
    """``layer`` back to its own class and output (its weights were never touched)."""
    if isinstance(layer, WithLowRank):
        layer.__class__ = _BASE[type(layer)]
        layer.__dict__.pop("low_rank", None)
