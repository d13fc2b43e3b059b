"""The fastest attention backend on this GPU for a job's shape, measured rather than assumed.

PyTorch's SDPA picks a kernel by rules; on some GPUs and shapes cuDNN's or another kernel is faster
(cuDNN attention is the fastest on Hopper at these lengths, flash elsewhere). Each candidate that
runs here is timed on one attention call of the job's shape (24 heads x 128, the joint text+image
length), and the fastest is used for the whole run; the result is remembered per GPU and length.
Backends that download kernels at run time (diffusers' ``*_hub``) are never candidates.
"""

from __future__ import annotations

import torch

from .device_speed import best_seconds

CANDIDATES = ("native", "_native_cudnn", "_native_flash", "_native_efficient")
HEADS, HEAD_DIM = 24, 128
_REPEATS = 5
_chosen: dict[tuple[str, int], tuple[str, dict[str, float]]] = {}


def fastest_attention(device: torch.device, tokens: int, dtype: torch.dtype) -> tuple[str | None, dict[str, float]]:
    """(backend name, seconds per call of each candidate that ran) for ``tokens`` joint tokens; (None, {})
    off CUDA, where diffusers' default is used."""
    if device.type != "cuda":
        return None, {}
    key = (str(device), tokens)
    if key not in _chosen:
        from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

        shape = (1, tokens, HEADS, HEAD_DIM)
        q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
        timings: dict[str, float] = {}
        with torch.inference_mode():
            for name in CANDIDATES:
                try:
                    backend = AttentionBackendName(name)
                    run = lambda b=backend: dispatch_attention_fn(q, k, v, backend=b)  # noqa: E731
                    timings[name] = best_seconds(run, device, _REPEATS)
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
    return f"attention: {backend}, the fastest measured here per call ({measured})"
