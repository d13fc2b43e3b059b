"""Per-token activation quantization in one GPU pass (Triton), for the fast rung's products without torch.compile.

Uncompiled, ``quantize_rows_fp8`` in torch is five passes over the activations (abs, amax, a float32 copy, the
division, the cast), which made eager 8-bit products 0.8-1.8x the bf16 time per layer on an H200
(bench/results/fast_kernels_h200_2026-11-30_fastaccum.json): only compiled blocks were faster than exact, and
their compile sat on the first image. This kernel reads each row once and writes its 8-bit values and scale,
with the torch formulas' exact arithmetic (the same amax, the same float32 division, round to nearest even), so
the products match the compiled rung's. Triton builds it in about a second on its first use in a process, and
keeps it in its own disk cache afterwards.

Used where the activations are on a CUDA GPU, Triton imports and torch.compile is not tracing (compiled blocks
fuse the torch formulas themselves); the CPU tests run the same kernel in Triton's interpreter.
"""

from __future__ import annotations

from functools import cache

import torch


@cache
def _kernel():
    """The Triton kernel, built on first use (None: Triton is not installed)."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def quantize_rows(x_ptr, q_ptr, scale_ptr, n_cols, row_stride, q_max, BLOCK: tl.constexpr, INTEGER: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        inside = cols < n_cols
        x = tl.load(x_ptr + row * row_stride + cols, mask=inside, other=0.0)
        amax = tl.max(tl.abs(x), axis=0).to(tl.float32)
        scale = tl.maximum(amax / q_max, 1e-12)
        y = x.to(tl.float32) / scale
        if INTEGER:  # round half to even (|y| <= 127): adding and removing 1.5 * 2**23 drops the fraction bits
            y = (y + 12582912.0) - 12582912.0
            y = tl.minimum(tl.maximum(y, -q_max), q_max)
        tl.store(q_ptr + row * n_cols + cols, y.to(q_ptr.dtype.element_ty), mask=inside)
        tl.store(scale_ptr + row, scale)

    return triton, quantize_rows


def available() -> bool:
    """Triton is installed, so the fused kernel can run on a CUDA GPU."""
    return _kernel() is not None


def usable_for(rows: torch.Tensor) -> bool:
    """The fused kernel serves these rows: on a CUDA GPU, Triton present, not inside a torch.compile trace."""
    return rows.is_cuda and not torch.compiler.is_compiling() and available()


def quantize_rows(rows: torch.Tensor, dtype: torch.dtype, q_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` [M, K] -> (values of ``dtype`` (float8_e4m3fn or int8) [M, K], float32 scale [M, 1]) with
    ``rows ~= values * scale``, one program per row. The same numbers as ``low_precision``'s torch formulas."""
    triton, kernel = _kernel()
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    m, k = rows.shape
    values = torch.empty((m, k), dtype=dtype, device=rows.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=rows.device)
    block = triton.next_power_of_2(k)
    warps = 4 if block <= 4096 else 8 if block <= 8192 else 16
    kernel[(m,)](
        rows, values, scale, k, rows.stride(0), q_max,
        BLOCK=block, INTEGER=not dtype.is_floating_point, num_warps=warps,
    )  # fmt: skip
    return values, scale
