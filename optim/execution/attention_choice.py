"""The fastest attention kernel on this GPU for a job's shape, measured rather than assumed.

PyTorch's SDPA picks a kernel by rules; on some GPUs and shapes cuDNN's or another kernel is faster.
Each candidate that runs here is timed on one attention call of the job's shape (24 heads x 128, the
joint text+image length), and the fastest is used for the whole run; the result is remembered per GPU,
length and fidelity. Exact candidates are diffusers' SDPA backends (bf16 in, bf16 out, fp32 softmax).
The fast rungs also try comfy-kitchen's INT8 attention (Q, K, V and the probabilities in 8 bits, fp32
softmax), when that library is installed and supports the GPU: it changes the result like the 8-bit
matmuls do, so the exact rung never uses it. Backends that download kernels at run time (diffusers'
``*_hub``) are never candidates.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

import torch

from .device_speed import best_seconds

# (batch, tokens, heads, head_dim) in, the same shape out: the layout the engine and diffusers use.
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

EXACT_BACKENDS = ("native", "_native_cudnn", "_native_flash", "_native_efficient")
INT8_KERNEL = "comfy_kitchen_int8"
HEADS, HEAD_DIM = 24, 128
_REPEATS = 5
_chosen: dict[tuple[str, int, bool], tuple[str, dict[str, float]]] = {}
_chosen_lock = threading.Lock()  # one measurement at a time: two would time each other


def _diffusers_kernel(name: str | None) -> Kernel:
    """One of diffusers' SDPA backends; None: whichever diffusers would use itself (the reference's)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    backend = None if name is None else AttentionBackendName(name)
    return partial(dispatch_attention_fn, attn_mask=None, dropout_p=0.0, is_causal=False, backend=backend)


def _int8_kernel(device: torch.device) -> Kernel | None:
    """comfy-kitchen's INT8 attention in the engine's layout, or None where it cannot run."""
    if device.type != "cuda":
        return None
    try:
        import comfy_kitchen
    except Exception:  # not installed, or its CUDA extension does not load under this torch
        return None
    if not comfy_kitchen.int8_attention_is_available(device):
        return None
    attend = comfy_kitchen.int8_attention

    def int8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # It takes (batch, heads, tokens, dim) with the last dimension contiguous: a transposed view.
        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    return int8_attention


def attention_kernel(name: str | None, device: torch.device) -> Kernel:
    """The kernel called ``name`` (a diffusers backend or :data:`INT8_KERNEL`); None: diffusers' default."""
    if name == INT8_KERNEL:
        kernel = _int8_kernel(device)
        if kernel is None:
            raise RuntimeError(f"{INT8_KERNEL} needs comfy-kitchen's CUDA extension on a GPU it supports")
        return kernel
    return _diffusers_kernel(name)


def attention_kernels(device: torch.device, lossy: bool) -> dict[str, Kernel]:
    """Every candidate for ``device``: the exact SDPA backends, and with ``lossy`` the 8-bit kernel
    where it runs here."""
    kernels = {name: _diffusers_kernel(name) for name in EXACT_BACKENDS}
    int8 = _int8_kernel(device) if lossy else None
    if int8 is not None:
        kernels[INT8_KERNEL] = int8
    return kernels


def fastest_attention(
    device: torch.device, tokens: int, dtype: torch.dtype, lossy: bool = False
) -> tuple[str | None, dict[str, float]]:
    """(kernel name, seconds per call of each candidate that ran) for ``tokens`` joint tokens; (None, {})
    off CUDA, where diffusers' default is used. ``lossy`` admits kernels that change the result."""
    if device.type != "cuda":
        return None, {}
    key = (str(device), tokens, lossy)
    with _chosen_lock:
        if key not in _chosen:
            shape = (1, tokens, HEADS, HEAD_DIM)
            q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
            timings: dict[str, float] = {}
            with torch.inference_mode():
                for name, kernel in attention_kernels(device, lossy).items():
                    try:
                        timings[name] = best_seconds(lambda kernel=kernel: kernel(q, k, v), device, _REPEATS)
                    except Exception:  # a kernel this GPU, dtype or build lacks: not a candidate here
                        continue
            del q, k, v
            best = min(timings, key=timings.get) if timings else None
            _chosen[key] = (best, timings)
        return _chosen[key]


def describe_choice(backend: str | None, timings: dict[str, float]) -> str:
    """The choice in one line for the run report."""
    if backend is None:
        return "attention: diffusers' default"
    measured = ", ".join(
        f"{name} {seconds * 1e3:.2f} ms" for name, seconds in sorted(timings.items(), key=lambda x: x[1])
    )
    lossy = " (8-bit: Q, K, V and probabilities)" if backend == INT8_KERNEL else ""
    return f"attention: {backend}{lossy}, the fastest measured here per call ({measured})"
