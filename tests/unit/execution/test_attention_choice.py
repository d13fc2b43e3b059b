"""Which attention kernels the engine may use: the exact rung only exact SDPA backends, the 8-bit kernel
refused with the fix where it cannot run, and the engine's attention the same arithmetic as SDPA's."""

from __future__ import annotations

import pytest
import torch

from optim.execution.attention_choice import (
    EXACT_BACKENDS,
    INT8_KERNEL,
    attention_kernel,
    attention_kernels,
    describe_choice,
    fastest_attention,
)

CPU = torch.device("cpu")


def test_exact_candidates_never_include_the_8_bit_kernel() -> None:
    assert tuple(attention_kernels(CPU, lossy=False)) == EXACT_BACKENDS
    assert INT8_KERNEL not in attention_kernels(CPU, lossy=True)  # no CUDA here: not a candidate


def test_the_8_bit_kernel_where_it_cannot_run_is_refused_with_what_it_needs() -> None:
    with pytest.raises(RuntimeError, match="comfy-kitchen"):
        attention_kernel(INT8_KERNEL, CPU)


def test_the_default_kernel_computes_sdpa_in_the_engines_layout() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 40, 3, 16, dtype=torch.float64) for _ in range(3))  # (batch, tokens, heads, dim)
    got = attention_kernel(None, CPU)(q, k, v)
    weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 16**0.5, dim=-1)
    expected = torch.einsum("bhqk,bkhd->bqhd", weights, v)
    assert got.shape == q.shape
    torch.testing.assert_close(got, expected)


def test_off_cuda_nothing_is_measured_and_the_report_says_diffusers_default() -> None:
    assert fastest_attention(CPU, 4096, torch.bfloat16, lossy=True) == (None, {})
    assert describe_choice(None, {}) == "attention: diffusers' default"
    line = describe_choice(INT8_KERNEL, {INT8_KERNEL: 1e-3, "native": 2e-3})
    assert line.startswith(f"attention: {INT8_KERNEL} (8-bit") and line.index(INT8_KERNEL + " 1.00 ms") < line.index(
        "native 2.00 ms"
    )
