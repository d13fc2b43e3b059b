"""fp8 weights (one scale per output row) multiplied in fp8 on GPUs with fp8 tensor cores.

Activations are quantized per token on the fly; ``torch._scaled_mm`` multiplies with both row-wise
scales and returns bf16. Needs compute capability 8.9 or newer (Ada, Hopper, Blackwell); elsewhere
(and on the CPU) it expands the weight and multiplies in the input dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from .compressed_linear import CompressedLinear

FP8_MAX = 448.0  # largest finite float8_e4m3fn


class Fp8MatmulLinear(CompressedLinear):
    """``y = scaled_mm(fp8(x), fp8 weight)`` with per-token and per-row scales."""

    format_name = "fp8 matmul"
    workspace_per_weight = 3
    host_bytes_per_weight = 1.0

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if x.device.type != "cuda" or x.dtype != torch.bfloat16:
            return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)
        rows = x.reshape(-1, x.shape[-1])
        x_scale = (rows.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
        x_fp8 = (rows / x_scale.to(rows.dtype)).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(
            x_fp8, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale, out_dtype=x.dtype
        )
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], self.out_features)
