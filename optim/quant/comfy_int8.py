"""Comfy-Org's int8 files (``*_int8.safetensors``, ``*_int8_convrot.safetensors``): ``int8_tensorwise`` layers.

Stored: the int8 weight and a float scale per row (comfy-kitchen's ``TensorWiseINT8Layout``,
Comfy-Org/comfy-kitchen ``comfy_kitchen/tensor/int8.py``). ConvRot files store ``W @ H`` instead of ``W``,
with ``H`` the regular Hadamard matrix of the group size (Kronecker powers of
``[[1,1,1,-1],[1,1,-1,1],[1,-1,1,1],[-1,1,1,1]]``, divided by the square root of its size: symmetric and
orthogonal) applied to each group of input features, which spreads outliers before rounding to int8
(``comfy_kitchen/tensor/int8_utils.py``). Since ``H @ H = I``, rotating the expanded weight again gives ``W``.

Expansion, as comfy-kitchen's portable dequantization does it (``dequantize_int8_convrot_weight``): the
weight times its scale in float32, each group multiplied by ``H.T`` in float32, then cast to the compute dtype.
ComfyUI multiplies by the whole ``H`` (2 x 256 operations per weight); ``H`` is a Kronecker product
``Ha (x) Hb`` (16 x 16 for a group of 256), so here each group, read as an ``a`` x ``b`` matrix ``X``, becomes
``Ha X Hb.T``: 2 x (16 + 16) operations per weight, the factoring comfy-kitchen's CUDA activation kernel uses
(radix-4 stages). Same product, other rounding: within 2**-20 of max |w| of ComfyUI's float32 formula and
closer than it to the exact rotation (tests/unit/quant/test_comfy_quant_formats.py).

The fast rung multiplies as ComfyUI's Linear does (comfy-kitchen's ``int8_linear``): activations rotated by
``H`` per group in their own dtype (ConvRot only), quantized per row with comfy-kitchen's quantizer
(``quantize_int8_rowwise``), ``torch._int_mm`` on the stored int8 weight, rescaled per row and column.
"""

from __future__ import annotations

from functools import cache

import torch

from ..files.comfy_quant import INT8
from .comfy_quant import ComfyQuantLinear
from .low_precision import int8_linear

_H4 = ((1, 1, 1, -1), (1, 1, -1, 1), (1, -1, 1, 1), (-1, 1, 1, 1))


@cache
def _hadamard(size: int, device: torch.device) -> torch.Tensor:
    """ComfyUI's normalised regular Hadamard matrix of ``size`` (a power of 4), float32."""
    h4 = torch.tensor(_H4, dtype=torch.float32, device=device)
    h = h4
    while h.shape[0] < size:
        h = torch.kron(h, h4)
    if h.shape[0] != size:
        raise ValueError(f"a regular Hadamard matrix has a power of 4 rows, not {size}")
    return h / (size**0.5)  # size**0.5 is a power of two: the entries are exactly +-1/sqrt(size)


def hadamard(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The rotation matrix of ConvRot group ``size`` on ``device`` (float32, cached)."""
    return _hadamard(size, torch.device(device))


def rotate_groups(rows: torch.Tensor, group: int) -> torch.Tensor:
    """``rows`` [N, K] with every group of ``group`` columns multiplied by ``H.T`` (in ``rows``' dtype).

    ``H`` of 4**k rows is ``Ha (x) Hb`` with ``Ha``, ``Hb`` the normalised matrices of 4**ceil(k/2) and
    4**floor(k/2) rows (entries +-2**-n: exact), so a group read as an ``a`` x ``b`` matrix ``X`` maps to
    ``Ha X Hb.T``: two small products instead of one of ``group`` terms per weight."""
    if group < 16:
        h = hadamard(group, rows.device).to(rows.dtype)
        return torch.matmul(rows.reshape(-1, group), h.T).reshape(rows.shape)
    a = 4 ** ((group.bit_length() // 2 + 1) // 2)  # group = 4**k has bit length 2k + 1
    b = group // a
    ha, hb = (hadamard(n, rows.device).to(rows.dtype) for n in (a, b))
    x = torch.matmul(rows.reshape(-1, b), hb.T).reshape(-1, a, b)
    return torch.matmul(ha, x).reshape(rows.shape)


def quantize_rows_as_comfy(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` [M, K] -> (int8 values, float32 scale [M, 1]) as comfy-kitchen's ``quantize_int8_rowwise``: the
    scale cast to ``rows``' dtype and the division made in it (as its CUDA kernel rounds too), rounded, clamped
    to [-128, 127]. In bf16 a row's largest value can round to 128: ours (low_precision) would clamp it to 127."""
    scale = (rows.abs().amax(dim=1, keepdim=True).float() / 127.0).clamp(min=1e-30)
    return (rows / scale.to(rows.dtype)).round().clamp(-128, 127).to(torch.int8), scale


class ComfyInt8Linear(ComfyQuantLinear):
    """``y = x @ (int8 weight * row scale).T + bias``: a plain ``int8_tensorwise`` layer."""

    format_name = "int8 tensorwise"
    file_format = INT8
    stored_as = {"weight_int8": "weight", "weight_scale": "weight_scale"}
    # The int8 weight as float32, its product with the scale, the expanded copy.
    workspace_per_weight = 10
    host_bytes_per_weight = 1.0
    fast_arithmetic = "int8"

    @classmethod
    def buffer_specs(cls, out_features: int, in_features: int, dense: torch.dtype):
        return {
            "weight_int8": ((out_features, in_features), torch.int8),
            "weight_scale": ((out_features, 1), torch.float32),
        }

    def scaled_weight(self) -> torch.Tensor:
        """The stored weight times its scale, float32 (comfy-kitchen's ``dequantize_int8_simple``)."""
        return self.weight_int8.float() * self.weight_scale

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return self.scaled_weight().to(dtype)

    def fast_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # The stored int8 weight as is: nothing re-quantized, so the blocks may stay in the files.
        return int8_linear(x, self.weight_int8, self.weight_scale.reshape(1, -1), bias, quantize_rows_as_comfy)


class ComfyInt8ConvRotLinear(ComfyInt8Linear):
    """An ``int8_tensorwise`` layer stored rotated (ConvRot): expanded by rotating back per group."""

    format_name = "int8 convrot"
    workspace_per_weight = 14  # one more float32 copy: the rotated product

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return rotate_groups(self.scaled_weight(), self.convrot_groupsize).to(dtype)

    def fast_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # ComfyUI's product: the activations rotated by H (x @ H per group, one matmul in x's dtype, as
        # comfy-kitchen's int8_linear does: tensor cores on a GPU), then W8A8 on the stored int8 weight;
        # (x H)(W H^T)^T = x W^T since H is orthogonal.
        group = self.convrot_groupsize
        h = hadamard(group, x.device).to(x.dtype)
        rotated = torch.matmul(x.reshape(-1, self.in_features // group, group), h).reshape(x.shape)
        return super().fast_forward(rotated, bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f" {self.convrot_groupsize}"
