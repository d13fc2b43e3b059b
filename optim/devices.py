"""Resolving "auto" choices against the device the pipeline runs on."""

from __future__ import annotations

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def compute_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a precision choice; "auto" is bf16 on a GPU and fp32 on a CPU.

    fp16 is allowed but warned about by the nodes: this model overflows fp16 (NaN/black images).
    """
    if choice in ("auto", "fp8_e4m3fn", "int8", "nf4"):  # compressed storage computes in the auto dtype
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[choice]


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a dtype as the plan prints it (bf16, fp16, fp32)."""
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    return str(dtype).removeprefix("torch.")
