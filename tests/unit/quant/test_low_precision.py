"""The fast rung's W8A8 products against a float64 reference, on the CPU (the same torch kernels the GPU
runs: ``_scaled_mm`` and ``_int_mm`` have CPU implementations).

Stated bounds, relative L2 of ``x @ W.T`` for Gaussian activations and weights (measured on the H200,
bench/results/fast_kernels_h200_2026-11-30_first.json: fp8 3.8e-2, int8 1.2e-2 at the real widths):
fp8 e4m3 W8A8 within 5e-2, int8 W8A8 within 2e-2.
"""

from __future__ import annotations

import pytest
import torch

from optim.files.fp8_layouts import Fp8Layout, Fp8Weight, quantize_absmax
from optim.quant.compressed_linear import enable_fast_arithmetic
from optim.quant.fp8 import Fp8Linear
from optim.quant.int8 import Int8Linear
from optim.quant.low_precision import (
    fp8_linear,
    int8_linear,
    quantize_rows_fp8,
    quantize_rows_int8,
    supports,
)
from optim.quant.nf4 import Nf4Linear

BOUNDS = {"fp8": 5e-2, "int8": 2e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def _data(rows: int = 96, width: int = 256, out: int = 128):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=g)
    w = torch.randn(out, width, generator=g) / width**0.5
    return x, w, x.double() @ w.double().t()


@pytest.mark.parametrize("kind", ["fp8", "int8"])
def test_w8a8_product_is_within_its_bound_of_float64(kind):
    x, w, exact = _data()
    quantize, product = (quantize_rows_fp8, fp8_linear) if kind == "fp8" else (quantize_rows_int8, int8_linear)
    wq, ws = quantize(w)
    got = product(x, wq, ws.reshape(1, -1), None)
    assert got.dtype == x.dtype and got.shape == exact.shape
    assert _rel(got, exact) < BOUNDS[kind]


def test_int8_product_is_exactly_the_rescaled_integer_product():
    """int32 accumulation is exact: any scale applied wrongly (missing, transposed) shows here."""
    x, w, _ = _data()
    wq, ws = quantize_rows_int8(w)
    xq, xs = quantize_rows_int8(x)
    want = (xq.double() @ wq.double().t()) * xs.double() * ws.double().reshape(1, -1)
    got = int8_linear(x, wq, ws.reshape(1, -1), None)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["fp8", "int8"])
def test_activations_are_scaled_per_token(kind):
    """One token 1000x larger leaves the other tokens as accurate as before (a per-tensor scale would
    flush them to zero)."""
    x, w, _ = _data()
    x[0] *= 1000
    exact = x.double() @ w.double().t()
    quantize, product = (quantize_rows_fp8, fp8_linear) if kind == "fp8" else (quantize_rows_int8, int8_linear)
    wq, ws = quantize(w)
    got = product(x, wq, ws.reshape(1, -1), None)
    assert _rel(got[1:], exact[1:]) < BOUNDS[kind]


def test_few_rows_and_leading_dimensions_and_bias():
    """int8's kernel needs more than 16 rows: fewer are padded; [B, N, C] inputs keep their shape."""
    _, w, _ = _data()
    bias = torch.randn(128)
    wq, ws = quantize_rows_int8(w)
    x = torch.randn(1, 3, 256)
    got = int8_linear(x, wq, ws.reshape(1, -1), bias)
    want = x.double() @ w.double().t() + bias.double()
    assert got.shape == (1, 3, 128)
    assert _rel(got, want) < BOUNDS["int8"]


@pytest.mark.parametrize("layout", [Fp8Layout.SCALED, Fp8Layout.PLAIN])
def test_fp8_file_weights_multiply_in_fp8_close_to_their_expansion(layout):
    """ComfyUI's files keep one scale per tensor (1 for plain casts): the fast path spreads it per channel."""
    x, w, _ = _data()
    if layout is Fp8Layout.SCALED:
        data, scale = quantize_absmax(w)
    else:
        data, scale = (w * 8).to(torch.float8_e4m3fn), torch.ones(())
    layer = Fp8Linear(Fp8Weight(data, scale, layout), None)
    expanded = layer(x).double()
    layer.fast = True
    assert _rel(layer(x), expanded) < BOUNDS["fp8"]


def test_int8_weights_multiply_in_int8_close_to_their_expansion():
    x, w, _ = _data()
    layer = Int8Linear(w, None)
    expanded = layer(x).double()
    layer.fast = True
    assert _rel(layer(x), expanded) < BOUNDS["int8"]


def test_fast_arithmetic_is_switched_on_only_where_the_format_and_widths_allow():
    model = torch.nn.Sequential(Int8Linear(torch.randn(128, 256), None), Int8Linear(torch.randn(24, 128), None))
    assert not supports(128, 24)
    assert enable_fast_arithmetic(model, "int8") == 1  # the 24-wide layer keeps expanding
    assert model[0].fast and not model[1].fast
    with pytest.raises(ValueError, match="int8 weights cannot multiply in fp8"):
        enable_fast_arithmetic(model, "fp8")
    nf4 = torch.nn.Sequential(Nf4Linear(torch.randn(128, 256), None))
    with pytest.raises(ValueError, match="nf4"):
        enable_fast_arithmetic(nf4, "int8")


def test_the_blocks_multiply_in_8_bits_but_their_modulation_stays_exact():
    """Modulation runs once per schedule into a table: 8-bit products there would only add error."""
    from tiny_transformer import seven_block_transformer

    from optim.quant.compressed_linear import compressed_layers, enable_fast_blocks
    from optim.quant.format_registry import quantize_linears
    from optim.qwen.variants import Variant

    blocks = seven_block_transformer(Variant.EDIT_2509).transformer_blocks
    quantize_linears(blocks, "int8", lambda name: True)  # modulation included, as an int8 file stores it
    assert enable_fast_blocks(blocks, "int8") > 0
    for block in blocks:
        for name, layer in block.named_modules():
            if layer in compressed_layers(block):
                assert layer.fast == (name.split(".")[0] not in ("img_mod", "txt_mod")), name
