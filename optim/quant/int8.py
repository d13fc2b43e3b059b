"""Weight-only int8: one float scale per output row (absmax / 127). Half of bf16, near-lossless.
Pure torch: it runs, and streams, on any device."""

from __future__ import annotations

import torch

from ..settings import INT8
from .compressed_linear import CompressedLinear
from .low_precision import int8_linear
from .weight_format import QuantizedOnLoad


class Int8Linear(CompressedLinear):
    """``y = x @ (int8 weight * row scale).T + bias``."""

    format_name = "int8"
    workspace_per_weight = 8
    host_bytes_per_weight = 1.0
    fast_arithmetic = "int8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.float()
        scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_int8", torch.round(w / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale.to(weight.dtype))
        self._keep_bias(bias)

    @classmethod
    def buffer_specs(cls, out_features: int, in_features: int, dense: torch.dtype):
        return {"weight_int8": ((out_features, in_features), torch.int8), "weight_scale": ((out_features, 1), dense)}

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)

    def fast_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return int8_linear(x, self.weight_int8, self.weight_scale.float().reshape(1, -1), bias)


class Int8OnLoad(QuantizedOnLoad):
    """The int8 precision: every Linear in scope quantized to ``Int8Linear`` after loading."""

    name = "int8 (quantized on load)"
    precision = INT8
    layer_class = Int8Linear
