"""The weight formats a precision choice names, and turning dense Linears into them.

fp8 storage as the file keeps it is ``Fp8Linear`` (filled straight from the file); the formats
quantized on load are registered in ``QUANTIZED``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..settings import COMPRESSED_PRECISIONS, FP8, FP8_FAST, INT8, NF4
from .compressed_linear import CompressedLinear, replace_module
from .fp8 import Fp8Linear
from .fp8_matmul import Fp8MatmulLinear
from .int8 import Int8Linear
from .nf4 import Nf4Linear

# Precision choice -> the class its Linear weights become when quantized on load.
QUANTIZED: dict[str, type[CompressedLinear]] = {INT8: Int8Linear, NF4: Nf4Linear, FP8_FAST: Fp8MatmulLinear}
FORMATS: dict[str, type[CompressedLinear]] = {FP8: Fp8Linear, **QUANTIZED}
assert set(FORMATS) == set(COMPRESSED_PRECISIONS), "every compressed precision needs its format class"


def _quantizable(root: nn.Module, keep: Callable[[str], bool]) -> list[str]:
    return [n for n, m in root.named_modules() if isinstance(m, nn.Linear | Fp8Linear) and keep(n)]


def _dense_dtype(layer: nn.Module) -> torch.dtype:
    if isinstance(layer, Fp8Linear):
        return layer.bias.dtype if layer.bias is not None else torch.bfloat16
    return layer.weight.dtype


def quantize_linears(root: nn.Module, kind: str, keep: Callable[[str], bool]) -> int:
    """Replace every Linear (or fp8 Linear) under ``root`` whose name ``keep`` accepts by its ``kind``
    form, one layer at a time (only one dense weight is ever expanded). Returns how many were replaced."""
    cls = QUANTIZED[kind]
    names = _quantizable(root, keep)
    for name in names:
        layer = root.get_submodule(name)
        dense = layer.dequantized_weight(_dense_dtype(layer)) if isinstance(layer, Fp8Linear) else layer.weight.data
        bias = None if layer.bias is None else layer.bias.data
        replace_module(root, name, cls(dense, bias))
    return len(names)


def size_as_quantized(root: nn.Module, kind: str, keep: Callable[[str], bool]) -> None:
    """What ``quantize_linears`` would make of ``root``, with meta buffers of the same shapes and dtypes
    (for sizes from the files' headers)."""
    cls = QUANTIZED[kind]
    for name in _quantizable(root, keep):
        layer = root.get_submodule(name)
        replace_module(root, name, cls.empty(layer.out_features, layer.in_features, layer.bias, _dense_dtype(layer)))
