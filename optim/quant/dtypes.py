"""Precision names as torch dtypes: what a choice computes in, and how plans print a dtype."""

from __future__ import annotations

import torch

from ..settings import COMPRESSED_PRECISIONS

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def compute_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a precision choice; "auto" and the compressed formats compute in bf16 on a
    GPU and fp32 on a CPU. fp16 is allowed but warned about: this model overflows fp16 (NaN/black images)."""
    if choice == "auto" or choice in COMPRESSED_PRECISIONS:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[choice]


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a dtype as the plan prints it (bf16, fp16, fp32)."""
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    return str(dtype).removeprefix("torch.")
