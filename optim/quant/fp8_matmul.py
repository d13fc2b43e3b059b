"""fp8 weights (one scale per output row) multiplied in fp8 on GPUs with fp8 tensor cores.

Activations are quantized per token on the fly; ``torch._scaled_mm`` multiplies with both row-wise
scales (optim/quant/low_precision.py). On a GPU it needs compute capability 8.9 or newer (Ada,
Hopper, Blackwell); the CPU runs the same arithmetic.
"""

from __future__ import annotations

import torch

from ..settings import FP8_FAST
from .compressed_linear import CompressedLinear
from .low_precision import FP8_MAX, fp8_linear
from .weight_format import QuantizedOnLoad


class Fp8MatmulLinear(CompressedLinear):
    """``y = scaled_mm(fp8(x), fp8 weight)`` with per-token and per-row scales."""

    format_name = "fp8 matmul"
    workspace_per_weight = 3
    host_bytes_per_weight = 1.0
    fast_arithmetic = "fp8"
    fast = True  # quantized for fp8 matmuls: always multiplies in fp8

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.float()
        scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # [1, out] float32
        self._keep_bias(bias)

    @classmethod
    def buffer_specs(cls, out_features: int, in_features: int, dense: torch.dtype):
        return {
            "weight_fp8": ((out_features, in_features), torch.float8_e4m3fn),
            "weight_scale": ((1, out_features), torch.float32),
        }

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight_fp8.to(torch.float32) * self.weight_scale.reshape(-1, 1)).to(dtype)

    def fast_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return fp8_linear(x, self.weight_fp8, self.weight_scale, bias)


class Fp8MatmulOnLoad(QuantizedOnLoad):
    """The fp8_e4m3fn_fast precision: every Linear in scope quantized to ``Fp8MatmulLinear`` after loading."""

    name = "fp8 matmul (quantized on load)"
    precision = FP8_FAST
    layer_class = Fp8MatmulLinear
