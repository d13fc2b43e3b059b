"""Comfy-Org's nvfp4 files: e2m1 weights packed two per byte, an fp8 e4m3 scale per 16 weights and a float32
scale per tensor.

Stored as comfy-kitchen's ``TensorCoreNVFP4Layout`` keeps it (Comfy-Org/comfy-kitchen
``comfy_kitchen/tensor/nvfp4.py``; ComfyUI reads ``weight_scale`` as the block scales and ``weight_scale_2`` as the
tensor's scale): the weight padded to multiples of 16 both ways, each byte holding the even-indexed weight in its
high nibble, the block scales in cuBLAS's swizzled block layout. Native nvfp4 products need Blackwell tensor
cores (compute capability 10); here each weight is expanded where it is used, as comfy-kitchen's CUDA
``dequantize_nvfp4`` kernel does: ``e2m1 * (block scale * tensor scale)``, both products in float32, then cast
to the compute dtype. (Its portable eager twin multiplies in the compute dtype instead: up to one bf16 step
apart on some weights.)
"""

from __future__ import annotations

import torch

from ..files.comfy_quant import NVFP4
from .comfy_quant import ComfyQuantLinear, round_up, swizzled_shape, unswizzle

BLOCK = 16
# The e2m1 code points (sign bit 8): 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """The e2m1 values of ``packed`` [R, C/2] uint8 (even index in the high nibble) as float32 [R, C]."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=packed.device).unsqueeze(1)
    codes = torch.stack((packed >> 4, packed & 0x0F), dim=-1).reshape(packed.shape[0], -1)
    return torch.nn.functional.embedding(codes.to(torch.int32), table).squeeze(-1)


class Nvfp4Linear(ComfyQuantLinear):
    """``y = x @ (e2m1 weight * block scale * tensor scale).T + bias``."""

    format_name = "nvfp4"
    file_format = NVFP4
    stored_as = {"weight_fp4": "weight", "weight_scale": "weight_scale", "weight_scale_2": "weight_scale_2"}
    # The codes as int32, their float32 values, the scaled copy, the expanded copy.
    workspace_per_weight = 14
    host_bytes_per_weight = 0.5 + 1 / BLOCK

    @classmethod
    def buffer_specs(cls, out_features: int, in_features: int, dense: torch.dtype):
        rows, cols = round_up(out_features, BLOCK), round_up(in_features, BLOCK)
        return {
            "weight_fp4": ((rows, cols // 2), torch.uint8),
            "weight_scale": (swizzled_shape(rows, cols // BLOCK), torch.uint8),
            "weight_scale_2": ((), torch.float32),
        }

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        rows, cols = self.weight_fp4.shape[0], self.weight_fp4.shape[1] * 2
        blocks = unswizzle(self.weight_scale, rows, cols // BLOCK).view(torch.float8_e4m3fn).float()
        scales = blocks * self.weight_scale_2.float()
        values = unpack_e2m1(self.weight_fp4).reshape(rows, cols // BLOCK, BLOCK) * scales.unsqueeze(-1)
        return values.reshape(rows, cols)[: self.out_features, : self.in_features].to(dtype)
