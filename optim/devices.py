"""Resolving "auto" choices against the device the pipeline runs on."""

from __future__ import annotations

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def compute_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a precision choice; "auto" is bf16 on a GPU and fp32 on a CPU.

    fp16 is allowed but warned about by the nodes: this model overflows fp16 (NaN/black images).
    """
    if choice in (
        "auto",
        "fp8_e4m3fn",
        "fp8_e4m3fn_fast",
        "int8",
        "nf4",
    ):  # compressed storage computes in the auto dtype
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[choice]


def indexed(device: torch.device | str) -> torch.device:
    """``device`` with its index ("cuda" -> "cuda:0"), so devices compare equal however they were named."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a dtype as the plan prints it (bf16, fp16, fp32)."""
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    return str(dtype).removeprefix("torch.")


FP8_MATMUL_GPUS = "RTX 40xx/50xx, L4, L40, RTX 6000 Ada, H100, H200, B200"


def check_fp8_matmul(device: torch.device) -> None:
    """Refuse fp8 matmuls on a GPU without fp8 tensor cores (compute capability below 8.9)."""
    from .errors import QwenFitError

    if device.type != "cuda":
        return  # the CPU path expands the weights; nothing to refuse
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise QwenFitError(
            f"fp8_e4m3fn_fast needs fp8 tensor cores (compute capability 8.9 or newer: {FP8_MATMUL_GPUS}); "
            f"this GPU is {major}.{minor}. Use fp8_e4m3fn (fp8 storage, bf16 compute), which runs on any GPU."
        )
