"""Comfy-Org's mxfp8 files: fp8 e4m3 weights with one power-of-two (e8m0) scale per 32 weights of a row.

Stored as comfy-kitchen's ``TensorCoreMXFP8Layout`` keeps it (Comfy-Org/comfy-kitchen
``comfy_kitchen/tensor/mxfp8.py``): the weight padded to multiples of 32 both ways, the e8m0 scales in cuBLAS's
swizzled block layout. Native mxfp8 products need Blackwell tensor cores (compute capability 10); here each
weight is expanded where it is used, as comfy-kitchen's ``dequantize_mxfp8`` does: the fp8 value times
``2 ** (e - 127)`` in float32 (an e8m0 byte of 0 counts as 0, as there), cast to the compute dtype. The
product and the cast are exact (a 4-bit significand times a power of two), so the expansion is the stored
value itself.
"""

from __future__ import annotations

import torch

from ..files.comfy_quant import MXFP8
from .comfy_quant import ComfyQuantLinear, round_up, swizzled_shape, unswizzle

BLOCK = 32


def e8m0_to_float(codes: torch.Tensor) -> torch.Tensor:
    """e8m0 bytes (uint8) as float32 powers of two: the code is the float32 exponent field; 0 gives 0."""
    bits = codes.to(torch.int32) << 23
    return torch.where(codes == 0, torch.zeros_like(bits), bits).view(torch.float32)


class Mxfp8Linear(ComfyQuantLinear):
    """``y = x @ (fp8 weight * block scale).T + bias`` with one e8m0 scale per 32 weights of a row."""

    format_name = "mxfp8"
    file_format = MXFP8
    stored_as = {"weight_fp8": "weight", "weight_scale": "weight_scale"}
    # The fp8 weight as float32, its scaled copy, the expanded copy (the scales are 1/32 of that).
    workspace_per_weight = 10
    host_bytes_per_weight = 1 + 1 / BLOCK

    @classmethod
    def buffer_specs(cls, out_features: int, in_features: int, dense: torch.dtype):
        rows, cols = round_up(out_features, BLOCK), round_up(in_features, BLOCK)
        return {
            "weight_fp8": ((rows, cols), torch.float8_e4m3fn),
            "weight_scale": (swizzled_shape(rows, cols // BLOCK), torch.uint8),
        }

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        rows, cols = self.weight_fp8.shape
        scales = e8m0_to_float(unswizzle(self.weight_scale, rows, cols // BLOCK))
        values = self.weight_fp8.float().reshape(rows, cols // BLOCK, BLOCK) * scales.unsqueeze(-1)
        return values.reshape(rows, cols)[: self.out_features, : self.in_features].to(dtype)
