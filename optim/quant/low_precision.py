"""W8A8 matmuls: activations quantized per token on the fly, weights per output channel, products in
fp8 (``torch._scaled_mm``) or int8 (``torch._int_mm``), the result rescaled to the input dtype.

Both kernels run on CUDA (fp8 from compute capability 8.9, int8 from 7.5) and on the CPU, so the
CPU tests check the very arithmetic the GPU runs. Shapes the kernels cannot take (too few rows for
``_int_mm``, widths not multiples of 16) are padded with zero rows/refused by ``supports``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import fused_quantize

FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT8_MAX = 127.0
_INT_MM_MIN_ROWS = 17  # torch._int_mm on CUDA wants more than 16 rows
# fp8 products accumulate without Hopper's periodic promotion to fp32 (cuBLAS "fast accumulation"):
# faster; its extra deviation is in the benchmark's fast rows (bench/results, README).
FP8_FAST_ACCUMULATION = True


def supports(in_features: int, out_features: int) -> bool:
    """Both kernels need the inner and outer widths in multiples of 16."""
    return in_features % 16 == 0 and out_features % 16 == 0


def quantize_rows_fp8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` [M, K] -> (fp8 values, float32 scale [M, 1]) with ``rows ~= values * scale``."""
    if fused_quantize.usable_for(rows):  # one pass on a GPU, same numbers
        return fused_quantize.quantize_rows(rows, torch.float8_e4m3fn, FP8_MAX)
    scale = (rows.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
    return (rows.float() / scale).to(torch.float8_e4m3fn), scale


def quantize_rows_int8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` [M, K] -> (int8 values, float32 scale [M, 1]), symmetric, round to nearest (half to even)."""
    if fused_quantize.usable_for(rows):
        return fused_quantize.quantize_rows(rows, torch.int8, INT8_MAX)
    scale = (rows.abs().amax(dim=1, keepdim=True).float() / INT8_MAX).clamp(min=1e-12)
    return torch.round(rows.float() / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ (weight * weight_scale).T + bias`` with ``weight`` fp8 [N, K] and ``weight_scale`` float32
    [1, N] (per output channel), multiplied in fp8."""
    rows = x.reshape(-1, x.shape[-1])
    x_fp8, x_scale = quantize_rows_fp8(rows)
    out = torch._scaled_mm(
        x_fp8,
        weight.t(),
        scale_a=x_scale,
        scale_b=weight_scale,
        out_dtype=x.dtype,
        use_fast_accum=FP8_FAST_ACCUMULATION,
    )
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    quantize: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = quantize_rows_int8,
) -> torch.Tensor:
    """``x @ (weight * weight_scale).T + bias`` with ``weight`` int8 [N, K] and ``weight_scale`` float32
    [1, N], multiplied in int8 with int32 accumulation (exact), then rescaled in float32. ``quantize``
    turns the activation rows into (int8 values, float32 scale [M, 1])."""
    rows = x.reshape(-1, x.shape[-1])
    m = rows.shape[0]
    if m < _INT_MM_MIN_ROWS:
        rows = torch.cat([rows, rows.new_zeros(_INT_MM_MIN_ROWS - m, rows.shape[1])])
    x_int8, x_scale = quantize(rows)
    acc = torch._int_mm(x_int8, weight.t())
    out = (acc.float() * x_scale * weight_scale)[:m].to(x.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])
