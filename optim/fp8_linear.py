"""A Linear layer that stores its weight in fp8 (with a per-tensor scale) and computes in bf16/fp32.

The weight is expanded on the fly, so a 20B transformer takes half the memory of bf16. The fp8
data is a buffer, not a parameter, so ``module.dtype`` still reports the compute dtype (diffusers
casts latents to it).
"""

from __future__ import annotations

import torch
from torch import nn

from .weights.fp8 import Fp8Layout, Fp8Weight


class Fp8Linear(nn.Module):
    """``y = x @ dequantize(weight).T + bias`` with the weight kept in fp8."""

    def __init__(self, weight: Fp8Weight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.data.shape
        self.layout = weight.layout
        self.register_buffer("weight_fp8", weight.data)
        self.register_buffer("weight_scale", weight.scale.float())
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return Fp8Weight(self.weight_fp8, self.weight_scale, Fp8Layout(self.layout)).dequantize(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 {self.layout}"


def replace_linear(root: nn.Module, name: str, weight: Fp8Weight, bias: torch.Tensor | None) -> None:
    """Swap the Linear at dotted path ``name`` (under ``root``) for an Fp8Linear."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, Fp8Linear(weight, bias))
