"""Weight-only nf4: 4-bit NormalFloat codes (the 16 quantiles of a normal distribution, from the QLoRA
paper), two per byte, one absmax per block of 64 weights. About 0.53 bytes per weight. Pure torch."""

from __future__ import annotations

import torch

from ..settings import NF4
from .compressed_linear import CompressedLinear
from .weight_format import QuantizedOnLoad

NF4_BLOCK = 64
# The NF4 code book (QLoRA, Dettmers et al. 2023, appendix E): normal quantiles scaled to [-1, 1].
NF4_CODES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


class Nf4Linear(CompressedLinear):
    """``y = x @ nf4_decode(codes, absmax).T + bias`` with blocks of 64 weights."""

    format_name = "nf4"
    # The int64 byte index (4 per weight) next to the gathered bf16 pairs (2), then the scaled copy (2 + 2).
    workspace_per_weight = 6
    host_bytes_per_weight = 0.53  # 4 bits plus a float scale per 64 weights

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if weight.numel() % (2 * NF4_BLOCK):
            raise ValueError(f"nf4 needs a multiple of {2 * NF4_BLOCK} weights, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
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
        self._keep_bias(bias)

    @classmethod
    def buffer_specs(cls, out_features: int, in_features: int, dense: torch.dtype):
        numel = out_features * in_features
        return {
            "weight_nf4": ((numel // 2,), torch.uint8),
            "weight_absmax": ((numel // NF4_BLOCK,), torch.float32),
            "codes": ((16,), torch.float32),
        }

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        # One lookup per byte in a 256 x 2 table of code pairs: half the index memory of a per-nibble lookup.
        codes = self.codes.to(dtype)
        byte = torch.arange(256, device=codes.device)
        pairs = torch.stack([codes[byte >> 4], codes[byte & 15]], dim=-1)
        values = pairs[self.weight_nf4.long()].reshape(-1, NF4_BLOCK) * self.weight_absmax.to(dtype).unsqueeze(1)
        return values.reshape(self.out_features, self.in_features)


class Nf4OnLoad(QuantizedOnLoad):
    """The nf4 precision: every Linear in scope quantized to ``Nf4Linear`` after loading."""

    name = "nf4 (quantized on load)"
    precision = NF4
    layer_class = Nf4Linear
