"""Comfy-Org's int8 (ConvRot), mxfp8 and nvfp4 layers: the notes' checks, and each format's expansion against a
reference written here from ComfyUI's formulas (comfy-kitchen's eager dequantizers and the CUDA nvfp4 kernel):
the block-scale swizzle by its index formula (cuBLAS's block-scaling layout), e2m1 and e8m0 by their bit
definitions, the Hadamard matrix entry by entry from the base-4 digits of its indices.

Bounds: mxfp8 and nvfp4 expand exactly (equal to the reference bit for bit, in float32 and in bf16); int8
ConvRot (rotated by Kronecker factors) lies within 2**-20 of max |w| of ComfyUI's float32 formula and within
2**-21 of the exact (float64) rotation; against the bf16 source each format stays within its rounding step
(stated per test). The int8 fast product equals comfy-kitchen's int8_linear up to the rescale's rounding.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from optim.errors import QwenFitError
from optim.files.comfy_quant import comfy_quant_layers
from optim.files.safetensors_file import SafetensorsFile
from optim.quant.comfy_int8 import ComfyInt8ConvRotLinear, ComfyInt8Linear
from optim.quant.comfy_quant_formats import comfy_quant_linear
from optim.quant.mxfp8 import Mxfp8Linear
from optim.quant.nvfp4 import Nvfp4Linear
from tools.comfy_quant_files import quantized_layer

OUT, IN = 48, 512  # rows not a multiple of 32: the padded storage is exercised too


def _source(seed: int = 0, out_features: int = OUT, in_features: int = IN) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) * 0.05
    w[3, 17] = 0.9  # an outlier row: what ConvRot spreads
    return w.to(torch.bfloat16)


def _layer(weight: torch.Tensor, label: str, tmp_path, bias: torch.Tensor | None = None):
    """Write ``weight`` as ComfyUI saves one layer of ``label``, read it back through the pack."""
    tensors = quantized_layer("proj", weight, label)
    if bias is not None:
        tensors["proj.bias"] = bias
    path = tmp_path / f"{label}.safetensors"
    save_file(tensors, str(path))
    file = SafetensorsFile(path)
    spec = comfy_quant_layers(file)["proj"]
    stored = {key.removeprefix("proj."): file.read(key) for key in spec.stored_keys}
    return comfy_quant_linear(spec, stored, *weight.shape, bias), stored, spec


# ---- independent references -------------------------------------------------------------------------------


def _unswizzle_by_index(stored: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    flat = stored.reshape(-1)
    tiles_per_row = -(-cols // 4)
    out = torch.empty(rows, cols, dtype=stored.dtype)
    for r in range(rows):
        for c in range(cols):
            tile = (r // 128) * tiles_per_row + c // 4
            out[r, c] = flat[tile * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4]
    return out


def _e2m1(code: int) -> float:
    sign = -1.0 if code & 8 else 1.0
    exponent, mantissa = (code >> 1) & 3, code & 1
    return sign * (mantissa * 0.5 if exponent == 0 else 2.0 ** (exponent - 1) * (1 + mantissa / 2))


def _hadamard_by_digits(size: int) -> torch.Tensor:
    base = [[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]]
    h = torch.ones(size, size, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            a, b = i, j
            while a or b:
                h[i, j] *= base[a % 4][b % 4]
                a, b = a // 4, b // 4
    return h / size**0.5


def _mxfp8_reference(stored, rows, cols) -> torch.Tensor:
    data = stored["weight"].view(torch.float8_e4m3fn).double()
    codes = _unswizzle_by_index(stored["weight_scale"].view(torch.uint8), data.shape[0], data.shape[1] // 32)
    scales = torch.tensor([[0.0 if e == 0 else 2.0 ** (int(e) - 127) for e in row] for row in codes.tolist()])
    values = data.reshape(data.shape[0], -1, 32) * scales.double().unsqueeze(-1)
    return values.reshape(data.shape)[:rows, :cols]


def _nvfp4_reference(stored, rows, cols) -> torch.Tensor:
    """comfy-kitchen's CUDA kernel: e2m1 * (block scale * tensor scale), both products in float32."""
    packed = stored["weight"]
    codes = torch.stack((packed >> 4, packed & 15), dim=-1).reshape(packed.shape[0], -1)
    values = torch.tensor([[_e2m1(c) for c in row] for row in codes.tolist()], dtype=torch.float32)
    blocks = _unswizzle_by_index(stored["weight_scale"].view(torch.uint8), values.shape[0], values.shape[1] // 16)
    decode = blocks.view(torch.float8_e4m3fn).float() * stored["weight_scale_2"].float()
    out = values.reshape(values.shape[0], -1, 16) * decode.unsqueeze(-1)
    return out.reshape(values.shape)[:rows, :cols]


# ---- expansion ---------------------------------------------------------------------------------------------


def test_mxfp8_expands_exactly_to_the_stored_values(tmp_path) -> None:
    weight = _source(1)
    layer, stored, _ = _layer(weight, "mxfp8", tmp_path)
    assert isinstance(layer, Mxfp8Linear) and stored["weight"].shape == (64, IN)  # rows padded to 32
    assert stored["weight_scale"].dtype == torch.float8_e8m0fnu  # as ComfyUI saves it
    reference = _mxfp8_reference(stored, OUT, IN)
    assert torch.equal(layer.dequantized_weight(torch.float32).double(), reference)
    assert torch.equal(layer.dequantized_weight(torch.bfloat16), reference.to(torch.bfloat16))
    # Against the bf16 source: e4m3 keeps 3 fraction bits, so each weight is within 2**-4 of its block's scale
    # times 2**(exponent) ... bounded by 1/16 of the block's largest magnitude.
    blocks = weight.float().reshape(OUT, -1, 32)
    error = (reference.float().reshape(OUT, -1, 32) - blocks).abs()
    assert (error <= blocks.abs().amax(-1, keepdim=True) / 16).all()


def test_nvfp4_expands_exactly_as_comfy_kitchens_kernel(tmp_path) -> None:
    weight = _source(2)
    layer, stored, _ = _layer(weight, "nvfp4", tmp_path)
    assert isinstance(layer, Nvfp4Linear) and stored["weight"].shape == (OUT, IN // 2)
    assert stored["weight_scale"].shape == (128, IN // 16)  # 48 rows of block scales padded to a 128-row tile
    reference = _nvfp4_reference(stored, OUT, IN)
    assert torch.equal(layer.dequantized_weight(torch.float32), reference)
    assert torch.equal(layer.dequantized_weight(torch.bfloat16), reference.to(torch.bfloat16))
    # Against the bf16 source: the widest e2m1 step (4 -> 6) is 2 block-scale units, each unit at most
    # (1 + 2**-4) / 6 of the block's largest magnitude after the fp8 rounding of the scale.
    blocks = weight.float().reshape(OUT, -1, 16)
    error = (reference.reshape(OUT, -1, 16) - blocks).abs()
    assert (error <= blocks.abs().amax(-1, keepdim=True) * (1 + 2**-4) / 6 + 1e-6).all()


@pytest.mark.parametrize("label", ["int8_convrot", "int8_params"])
def test_int8_convrot_expands_as_comfyuis_formula(tmp_path, label: str) -> None:
    weight = _source(3)
    layer, stored, spec = _layer(weight, label, tmp_path)
    assert isinstance(layer, ComfyInt8ConvRotLinear) and spec.convrot_groupsize == 256 == layer.convrot_groupsize
    q, scale = stored["weight"], stored["weight_scale"]
    assert q.dtype == torch.int8 and scale.shape == (OUT, 1) and scale.dtype == torch.float32
    h = _hadamard_by_digits(256)
    scaled = q.float() * scale  # comfy-kitchen's dequantize_int8_simple, float32
    # ComfyUI's float32 formula (grouped matmul by H.T), with H built here entry by entry. The pack factors H
    # (16 x 16 Kronecker factors): other rounding, within 2**-20 of max |w| (measured 2**-20.9 over 80 seeded
    # weights of 16..3072 inputs), and in bf16 within one bf16 step (2**-7 of the value).
    formula = torch.matmul(scaled.reshape(OUT, -1, 256), h.float().T).reshape(OUT, IN)
    got = layer.dequantized_weight(torch.float32)
    assert (got - formula).abs().max() <= 2**-20 * formula.abs().max()
    in_bf16 = layer.dequantized_weight(torch.bfloat16).float()
    assert ((in_bf16 - formula.to(torch.bfloat16).float()).abs() <= 2**-7 * formula.abs() + 2**-20).all()
    # The exact rotation (float64 holds every partial sum exactly here): the factored product is within 2**-21
    # of max |w| (measured 2**-22.0; ComfyUI's own matmul 2**-21.0).
    exact = torch.matmul(scaled.double().reshape(OUT, -1, 256), h.T).reshape(OUT, IN)
    assert (got.double() - exact).abs().max() <= 2**-21 * exact.abs().max()
    # Against the bf16 source: the rounding error is at most half a step per rotated weight, and rotating
    # back keeps each row's length, so a row is within sqrt(in) * scale / 2 (plus bf16's own rounding).
    row_error = (got.double() - weight.double()).norm(dim=1)
    assert (row_error <= IN**0.5 * scale.double().squeeze(1) / 2 + 1e-3).all()
    # Not rotating back would be far off: the rotation is what the expansion undoes.
    assert (scaled.double() - weight.double()).abs().max() > 0.1


def test_int8_without_rotation_is_weight_times_row_scale(tmp_path) -> None:
    weight = _source(4)
    layer, stored, spec = _layer(weight, "int8", tmp_path)
    assert type(layer) is ComfyInt8Linear and spec.convrot_groupsize == 0
    assert torch.equal(layer.dequantized_weight(torch.float32), stored["weight"].float() * stored["weight_scale"])


def test_a_quantized_layer_computes_with_its_expanded_weight_and_the_int8_product_is_close(tmp_path) -> None:
    weight, bias = _source(5), torch.linspace(-1, 1, OUT)
    x = torch.randn(4, 20, IN)
    for label in ("int8_convrot", "mxfp8", "nvfp4"):
        layer, _, _ = _layer(weight, label, tmp_path, bias)
        expected = torch.nn.functional.linear(x, layer.dequantized_weight(torch.float32), bias)
        assert torch.equal(layer(x), expected)
    # ComfyUI's own int8 product (activations rotated by H, quantized per row): close to the expanded one.
    layer, _, _ = _layer(weight, "int8_convrot", tmp_path, bias)
    expected = layer(x)
    assert (layer.fast_forward(x, bias) - expected).abs().max() <= 0.02 * expected.abs().max()


def _comfy_int8_linear(x, q, w_scale, bias, group: int) -> torch.Tensor:
    """comfy-kitchen's eager ``int8_linear`` written out: the activations rotated per group by H (built here from
    base-4 digits) in their own dtype, quantized per row (scale absmax / 127 in float32, floored at 1e-30, the
    division in x's dtype, round, clamp to [-128, 127]), the integer product (float64: exact here), rescaled by
    (row scale * weight scale) in float32, cast to x's dtype, plus the bias."""
    if group:
        h = _hadamard_by_digits(group).to(x.dtype)
        x = torch.matmul(x.reshape(-1, x.shape[-1] // group, group), h).reshape(x.shape)
    rows = x.reshape(-1, x.shape[-1])
    x_scale = (rows.abs().amax(dim=-1, keepdim=True).float() / 127.0).clamp(min=1e-30)
    x_q = (rows / x_scale.to(rows.dtype)).round().clamp(-128, 127).to(torch.int8)
    acc = x_q.double() @ q.double().T
    out = (acc.float() * (x_scale * w_scale.reshape(1, -1))).to(x.dtype) + bias.to(x.dtype)
    return out.reshape(*x.shape[:-1], q.shape[0])


@pytest.mark.parametrize("label", ["int8_convrot", "int8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_the_int8_fast_product_is_comfyuis_int8_linear(tmp_path, label: str, dtype: torch.dtype) -> None:
    weight, bias = _source(6), torch.linspace(-1, 1, OUT)
    layer, stored, spec = _layer(weight, label, tmp_path, bias)
    x = (torch.randn(2, 40, IN, generator=torch.Generator().manual_seed(7)) * 3).to(dtype)
    x[0, 5, 33] = 60.0  # an activation outlier: what the rotation spreads
    got = layer.fast_forward(x, bias.to(dtype))
    reference = _comfy_int8_linear(x, stored["weight"], stored["weight_scale"], bias, spec.convrot_groupsize)
    assert got.dtype == dtype and torch.isfinite(got).all()
    # Same int8 operands and exact integer sums; only the float32 rescale's order differs (two roundings before
    # the bias): float32 within 2**-21 of max |y| (measured 2**-22.7), bf16 within one bf16 step of each value
    # where that flips the cast (measured: equal).
    error = (got.float() - reference.float()).abs()
    if dtype == torch.bfloat16:
        assert (error <= 2**-7 * reference.float().abs()).all()
    else:
        assert error.max() <= 2**-21 * reference.abs().max()
    # And near the exact rung (the expanded weight, float32): 8-bit activations with an outlier of 60, which
    # the rotation spreads (measured 1.0 % of max |y| with ConvRot, 2.5 % without).
    exact = torch.nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32), bias)
    bound = 0.015 if spec.convrot_groupsize else 0.04
    assert (got.float() - exact).abs().max() <= bound * exact.abs().max()


# ---- the notes ----------------------------------------------------------------------------------------------


def _file_with_note(tmp_path, conf: dict, extra: dict | None = None) -> SafetensorsFile:
    tensors = {
        "proj.weight": torch.zeros(16, 256, dtype=torch.int8),
        "proj.weight_scale": torch.ones(16, 1),
        "proj.comfy_quant": torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8),
        **(extra or {}),
    }
    path = tmp_path / "noted.safetensors"
    save_file(tensors, str(path))
    return SafetensorsFile(path)


@pytest.mark.parametrize(
    ("conf", "words"),
    [
        ({"format": "convrot_w4a4", "convrot_groupsize": 256}, "'convrot_w4a4'. noted.safetensors is a quantized"),
        ({"format": "int4_magic"}, "format QwenFit does not read"),
        ({"convrot": True}, "stores proj as None"),
        ({"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 32}, "not a power of 4"),
        ({"format": "nvfp4"}, "lacks proj.weight_scale_2"),
    ],
    ids=["w4a4", "unknown", "no-format", "group-32", "nvfp4-without-tensor-scale"],
)
def test_notes_the_pack_cannot_read_are_refused_with_the_fix(tmp_path, conf: dict, words: str) -> None:
    with pytest.raises(QwenFitError, match=words):
        comfy_quant_layers(_file_with_note(tmp_path, conf))


def test_fp8_layers_are_left_to_the_fp8_reader_and_both_spellings_of_convrot_are_read(tmp_path) -> None:
    assert comfy_quant_layers(_file_with_note(tmp_path, {"format": "float8_e4m3fn"})) == {}
    flat = comfy_quant_layers(_file_with_note(tmp_path, {"format": "int8_tensorwise", "convrot": True}))
    assert flat["proj"].convrot_groupsize == 256  # ComfyUI's default group
    nested = {"format": "int8_tensorwise", "params": {"convrot": True, "convrot_groupsize": 16}}
    assert comfy_quant_layers(_file_with_note(tmp_path, nested))["proj"].convrot_groupsize == 16
