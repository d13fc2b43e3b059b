"""fp8 storage as the file keeps it (plain cast or ComfyUI's scaled layout), computing in bf16/fp32.

The weight is expanded on the fly, so a 20B transformer takes half the memory of bf16.
"""

from __future__ import annotations

import torch
from torch import nn

from ..files.fp8_layouts import Fp8Layout, Fp8Weight
from .compressed_linear import CompressedLinear, replace_module
from .low_precision import fp8_linear


class Fp8Linear(CompressedLinear):
    """``y = x @ dequantize(weight).T + bias`` with the weight kept in fp8 (per-tensor scale)."""

    format_name = "fp8"
    workspace_per_weight = 6
    host_bytes_per_weight = 1.0
    fast_arithmetic = "fp8"

    def __init__(self, weight: Fp8Weight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.data.shape
        self.layout = weight.layout
        self.register_buffer("weight_fp8", weight.data)
        self.register_buffer("weight_scale", weight.scale.float())
        self._keep_bias(bias)

    @classmethod
    def buffer_specs(cls, out_features: int, in_features: int, dense: torch.dtype):
        return {"weight_fp8": ((out_features, in_features), torch.float8_e4m3fn), "weight_scale": ((), torch.float32)}

    @classmethod
    def empty(cls, out_features: int, in_features: int, bias: nn.Parameter | None, dense: torch.dtype) -> nn.Module:
        layer = super().empty(out_features, in_features, bias, dense)
        layer.layout = Fp8Layout.PLAIN
        return layer

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return Fp8Weight(self.weight_fp8, self.weight_scale, Fp8Layout(self.layout)).dequantize(dtype)

    def fast_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # One scale per tensor in ComfyUI's layouts (1 for plain casts): the kernel wants one per channel.
        scale = self.weight_scale.float().reshape(1, -1).expand(1, self.out_features).contiguous()
        if self.layout == Fp8Layout.PLAIN:
            scale = torch.ones_like(scale)
        return fp8_linear(x, self.weight_fp8, scale, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 {self.layout}"


def replace_linear(root: nn.Module, name: str, weight: Fp8Weight, bias: torch.Tensor | None) -> None:
    """Swap the Linear at dotted path ``name`` (under ``root``) for an Fp8Linear."""
    replace_module(root, name, Fp8Linear(weight, bias))
