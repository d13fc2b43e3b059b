"""What the Comfy-Org quantized formats share: a Linear filled with the file's tensors as stored.

Each format (optim/quant/comfy_int8.py, mxfp8.py, nvfp4.py) is one class: it keeps the weight and its scales
as the file stores them (uint8 where the file's dtype has no torch arithmetic), so the block streamer copies
them compressed, and expands one weight at a time where it is used, following comfy-kitchen's arithmetic
(Comfy-Org/comfy-kitchen ``comfy_kitchen/backends/eager/quantization.py`` and ``float_utils.py``, the
backends ComfyUI's ``comfy/quant_ops.py`` calls). The block-scale swizzle is cuBLAS's block-scaling layout
(NVIDIA cuBLAS documentation, "1D block scaling factors layout"), written here from that description.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .compressed_linear import CompressedLinear


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def swizzled_shape(rows: int, cols: int) -> tuple[int, int]:
    """The stored shape of a ``rows`` x ``cols`` table of block scales in cuBLAS's layout: tiles of 128 rows by 4
    columns, the table padded to whole tiles."""
    return round_up(rows, 128), round_up(cols, 4)


def unswizzle(stored: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The ``rows`` x ``cols`` block scales of a table stored in cuBLAS's layout (any shape of the right size).

    Each 128x4 tile is 512 consecutive values; tiles go row of tiles by row of tiles; inside a tile the scale
    of (row r, column c) sits at ``(r % 32) * 16 + (r // 32) * 4 + c``.
    """
    padded_rows, padded_cols = swizzled_shape(rows, cols)
    tiles = stored.reshape(padded_rows // 128, padded_cols // 4, 32, 4, 4)  # [tile row, tile col, r%32, r//32, c]
    table = tiles.permute(0, 3, 2, 1, 4).reshape(padded_rows, padded_cols)
    return table[:rows, :cols]


class ComfyQuantLinear(CompressedLinear):
    """A Linear whose weight a Comfy-Org file stores in one of its quantized formats."""

    file_format: ClassVar[str]  # the ``.comfy_quant`` format name
    # Buffer name -> the suffix of the file tensor it holds ("weight", "weight_scale", "weight_scale_2").
    stored_as: ClassVar[dict[str, str]]
    convrot_groupsize: int = 0

    @classmethod
    def from_stored(
        cls,
        stored: dict[str, torch.Tensor],
        out_features: int,
        in_features: int,
        bias: torch.Tensor | None,
        convrot_groupsize: int = 0,
    ) -> ComfyQuantLinear:
        """The layer holding ``stored`` (buffer name -> the file's tensor, any device) for an
        ``out_features`` x ``in_features`` weight; a tensor of the wrong size raises ValueError."""
        layer = cls.empty(out_features, in_features, None, torch.bfloat16)
        for name, (shape, dtype) in cls.buffer_specs(out_features, in_features, torch.bfloat16).items():
            layer._buffers[name] = as_buffer(stored[name], shape, dtype, f"{cls.file_format} {name}")
        layer._keep_bias(bias)
        layer.convrot_groupsize = convrot_groupsize
        return layer

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.format_name}"


def as_buffer(value: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, what: str) -> torch.Tensor:
    """``value`` as a buffer of ``shape`` and ``dtype``: one-byte types are reinterpreted (a file may store e8m0
    or fp8 scales as uint8), others cast (exact for the scales' float16/bfloat16 -> float32); a single scale
    for a whole tensor is repeated per row."""
    if value.element_size() == 1 and torch.empty((), dtype=dtype).element_size() == 1:
        value = value.view(dtype)
    else:
        value = value.to(dtype)
    if value.numel() == math.prod(shape):
        return value.reshape(shape)
    if value.numel() == 1:
        return value.reshape(()).expand(shape).contiguous()
    raise ValueError(f"{what} holds {value.numel()} values where {list(shape)} are needed")
