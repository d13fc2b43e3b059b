"""What every compressed Linear layer shares: one class per weight format derives from it.

A format's class owns its buffers' shapes and dtypes (``buffer_specs``), its bytes per weight on
the host, the temporaries of expanding one weight (``workspace_per_weight``), its expansion
(``dequantized_weight``) and its matmul (``forward``). The planner and the header-only sizes ask the
class, never a class name: a new format is one new file in optim/quant/ and one registry entry.
Weights are buffers, not parameters, so the block streamer copies them compressed and
``module.dtype`` still reports the compute dtype (diffusers casts latents to it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from ..qwen.anatomy import is_modulation
from .low_precision import supports

META = torch.device("meta")


class CompressedLinear(nn.Module):
    """``y = x @ expand(weight).T + bias`` with the weight kept compressed between uses."""

    format_name: ClassVar[str]  # how plans and reports name the storage ("fp8", "int8", ...)
    # Temporaries per weight while the weight expands (index tensors, float32 intermediates, the
    # expanded copy); fitted to the H200 run of 2026-11-22 (bench/README.md).
    workspace_per_weight: ClassVar[int]
    host_bytes_per_weight: ClassVar[float]  # planned host bytes per weight, scales included
    # The low-precision arithmetic this format can multiply in without expanding ("fp8", "int8"), if any.
    fast_arithmetic: ClassVar[str | None] = None
    fast: bool = False  # set by enable_fast_arithmetic: multiply in fast_arithmetic (W8A8)

    in_features: int
    out_features: int
    bias: nn.Parameter | None

    @classmethod
    def buffer_specs(
        cls, out_features: int, in_features: int, dense: torch.dtype
    ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of the buffers a layer of this shape holds."""
        raise NotImplementedError

    @classmethod
    def empty(cls, out_features: int, in_features: int, bias: nn.Parameter | None, dense: torch.dtype) -> nn.Module:
        """A layer of this format holding meta buffers only: sized exactly, nothing quantized."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features, layer.bias = out_features, in_features, bias
        for name, (shape, dtype) in cls.buffer_specs(out_features, in_features, dense).items():
            layer.register_buffer(name, torch.empty(shape, dtype=dtype, device=META))
        return layer

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.fast and supports(self.in_features, self.out_features):  # widths the kernels take
            return self.fast_forward(x, bias)
        return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)

    def fast_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The W8A8 product (formats with ``fast_arithmetic`` only)."""
        raise NotImplementedError

    def _keep_bias(self, bias: torch.Tensor | None) -> None:
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None


def compressed_layers(module: nn.Module) -> list[CompressedLinear]:
    """Every compressed Linear under ``module``."""
    return [m for m in module.modules() if isinstance(m, CompressedLinear)]


def enable_fast_arithmetic(root: nn.Module, arithmetic: str, skip: Callable[[str], bool] = lambda name: False) -> int:
    """Make every compressed Linear under ``root`` (but those ``skip`` names) multiply in ``arithmetic``
    ("fp8" or "int8"); returns how many. Layers whose widths the kernels cannot take keep expanding."""
    layers = [
        m
        for name, m in root.named_modules()
        if isinstance(m, CompressedLinear) and not skip(name) and supports(m.in_features, m.out_features)
    ]
    wrong = {type(m).format_name for m in layers if m.fast_arithmetic != arithmetic}
    if wrong:
        raise ValueError(f"{', '.join(sorted(wrong))} weights cannot multiply in {arithmetic}")
    for layer in layers:
        layer.fast = True
    return len(layers)


def enable_fast_blocks(blocks: nn.ModuleList, arithmetic: str) -> int:
    """The fast rung's layers: each transformer block's attention and MLP Linears multiply in
    ``arithmetic``; its modulation layers stay exact (they run once per schedule, into a table: no speed
    to gain, and their error would reach every step). Returns how many layers multiply in 8 bits."""
    return sum(enable_fast_arithmetic(block, arithmetic, skip=is_modulation) for block in blocks)


def reset_fast_arithmetic(root: nn.Module) -> None:
    """Every compressed Linear under ``root`` back to its format's own default (expanding, but for formats
    made for 8-bit products, which always multiply so)."""
    for layer in compressed_layers(root):
        layer.__dict__.pop("fast", None)


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at dotted path ``name`` under ``root``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
