"""Weight-only int8 and nf4 Linear layers (pure torch: they run, and stream, on any device).

- int8: one float scale per output row (absmax / 127). Half of bf16, near-lossless.
- nf4: 4-bit NormalFloat codes (the 16 quantiles of a normal distribution, from the QLoRA paper),
  two per byte, one absmax per block of 64 weights. About 0.53 bytes per weight.

Both keep their data as buffers, so the block streamer copies them compressed and the forward
expands them on the GPU right before the matmul.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .fp8_linear import Fp8Linear

NF4_BLOCK = 64
# The NF4 code book (QLoRA, Dettmers et al. 2023, appendix E): normal quantiles scaled to [-1, 1].
NF4_CODES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


class Int8Linear(nn.Module):
    """``y = x @ (int8 weight * row scale).T + bias``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.float()
        scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_int8", torch.round(w / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale.to(weight.dtype))
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)


class Nf4Linear(nn.Module):
    """``y = x @ nf4_decode(codes, absmax).T + bias`` with blocks of 64 weights."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if weight.numel() % (2 * NF4_BLOCK):
            raise ValueError(f"nf4 needs a multiple of {2 * NF4_BLOCK} weights, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.compute_dtype = weight.dtype
        blocks = weight.float().reshape(-1, NF4_BLOCK)
        absmax = blocks.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        codes = torch.tensor(NF4_CODES, dtype=torch.float32, device=weight.device)
        # Nearest code for each normalised weight (in row chunks to bound the temporary).
        index = torch.empty(blocks.shape, dtype=torch.uint8, device=weight.device)
        for start in range(0, blocks.shape[0], 1 << 14):
            part = blocks[start : start + (1 << 14)] / absmax[start : start + (1 << 14)]
            index[start : start + (1 << 14)] = (part.unsqueeze(-1) - codes).abs().argmin(dim=-1).to(torch.uint8)
        flat = index.reshape(-1)
        self.register_buffer("weight_nf4", (flat[0::2] << 4) | flat[1::2])
        self.register_buffer("weight_absmax", absmax.reshape(-1))
        self.register_buffer("codes", codes)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        # One lookup per byte in a 256 x 2 table of code pairs: half the index memory of a per-nibble lookup.
        codes = self.codes.to(dtype)
        byte = torch.arange(256, device=codes.device)
        pairs = torch.stack([codes[byte >> 4], codes[byte & 15]], dim=-1)
        values = pairs[self.weight_nf4.long()].reshape(-1, NF4_BLOCK) * self.weight_absmax.to(dtype).unsqueeze(1)
        return values.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)


QUANTIZED = {"int8": Int8Linear, "nf4": Nf4Linear}


def quantize_linears(root: nn.Module, kind: str, keep: Callable[[str], bool]) -> int:
    """Replace every Linear (or fp8 Linear) under ``root`` whose name ``keep`` accepts by its ``kind``
    form, one layer at a time (only one dense weight is ever expanded). Returns how many were replaced."""
    cls = QUANTIZED[kind]
    names = [n for n, m in root.named_modules() if isinstance(m, nn.Linear | Fp8Linear) and keep(n)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        layer = getattr(parent, child)
        dtype = layer.bias.dtype if layer.bias is not None else torch.bfloat16
        dense = layer.dequantized_weight(dtype) if isinstance(layer, Fp8Linear) else layer.weight.data
        bias = None if layer.bias is None else layer.bias.data
        setattr(parent, child, cls(dense, bias))
    return len(names)


FP8_MAX = 448.0  # largest finite float8_e4m3fn


class Fp8MatmulLinear(nn.Module):
    """fp8 weights (one scale per output row) multiplied in fp8 on GPUs with fp8 tensor cores.

    Activations are quantized per token on the fly; ``torch._scaled_mm`` multiplies with both
    row-wise scales and returns bf16. Needs compute capability 8.9 or newer (Ada, Hopper,
    Blackwell); elsewhere (and on the CPU) it expands the weight and multiplies in the input dtype.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.float()
        scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # [1, out] float32
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

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


QUANTIZED["fp8_e4m3fn_fast"] = Fp8MatmulLinear
