"""LoRAs applied as a layer runs: on every weight format, both exact forms (merged into the dense
weight for many tokens, two thin products for few) give ``x @ (W + scale * up @ down).T + b``; detaching
gives the layer back untouched; the state survives the weights being re-pointed (streaming)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optim.files.fp8_layouts import Fp8Layout, Fp8Weight
from optim.quant.fp8 import Fp8Linear
from optim.quant.fp8_matmul import Fp8MatmulLinear
from optim.quant.int8 import Int8Linear
from optim.quant.low_rank import (
    LowRankFactors,
    WithLowRank,
    attach_low_rank,
    detach_low_rank,
    low_rank_on,
    merge_is_cheaper,
)
from optim.quant.nf4 import Nf4Linear

IN, OUT, RANK = 64, 128, 6


def _layer(kind: str) -> nn.Module:
    torch.manual_seed(0)
    dense = nn.Linear(IN, OUT)
    if kind == "linear":
        return dense
    weight, bias = dense.weight.data, dense.bias.data
    if kind == "fp8":
        scale = weight.abs().max() / 448
        return Fp8Linear(Fp8Weight((weight / scale).to(torch.float8_e4m3fn), scale, Fp8Layout.SCALED), bias)
    return {"int8": Int8Linear, "nf4": Nf4Linear, "fp8_matmul": Fp8MatmulLinear}[kind](weight, bias)


def _dense(layer: nn.Module) -> torch.Tensor:
    return layer.weight.data if isinstance(layer, nn.Linear) else layer.dequantized_weight(torch.float32)


def _factors() -> LowRankFactors:
    generator = torch.Generator().manual_seed(1)
    down = torch.randn(RANK, IN, generator=generator) * 0.1
    up = torch.randn(OUT, RANK, generator=generator) * 0.1
    return LowRankFactors(down, up, torch.tensor([0.5] * 4 + [-1.25] * 2))  # two LoRAs stacked


@pytest.mark.parametrize("kind", ["linear", "fp8", "int8", "nf4", "fp8_matmul"])
@pytest.mark.parametrize("tokens", [3, 200])  # few: thin products; many: merged into the dense weight
def test_the_update_is_exact_on_every_weight_format(kind, tokens):
    layer = _layer(kind)
    x = torch.randn(1, tokens, IN)
    before = layer(x)
    factors = _factors()
    assert merge_is_cheaper(tokens, IN, OUT) == (tokens == 200)
    attach_low_rank(layer, (factors,))
    assert isinstance(layer, WithLowRank) and isinstance(layer, nn.Module)
    merged = _dense(layer) + (factors.up * factors.scale) @ factors.down
    if kind == "fp8_matmul":  # multiplies in fp8 (no dense weight): its own product plus the thin products
        want = before + (x @ factors.down.T * factors.scale) @ factors.up.T
    else:
        want = nn.functional.linear(x, merged, layer.bias)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    detach_low_rank(layer)
    assert not isinstance(layer, WithLowRank) and "low_rank" not in layer.__dict__
    assert torch.equal(layer(x), before)


def test_a_new_scale_needs_no_new_factors():
    layer = _layer("int8")
    factors = _factors()
    attach_low_rank(layer, (factors,))
    x = torch.randn(1, 3, IN)
    first = layer(x)
    factors.scale.zero_()  # what a strength of 0 writes: the layer's own output again
    assert torch.equal(layer(x), nn.functional.linear(x, layer.dequantized_weight(torch.float32), layer.bias))
    assert not torch.equal(first, layer(x))


def test_the_update_survives_re_pointed_weights():
    """The block streamer binds a streamed layer to another buffer every step: the update is the layer's,
    not its weight's."""
    layer = _layer("linear")
    attach_low_rank(layer, (_factors(),))
    x = torch.randn(1, 3, IN)
    first = layer(x)
    layer._parameters["weight"] = nn.Parameter(layer.weight.data.clone(), requires_grad=False)
    assert torch.equal(layer(x), first)


def test_the_fast_8_bit_path_adds_the_thin_products():
    layer = _layer("int8")
    layer.fast = True  # W8A8: no dense weight to merge into, whatever the token count
    x = torch.randn(1, 200, IN)
    before = layer(x)
    factors = _factors()
    attach_low_rank(layer, (factors,))
    torch.testing.assert_close(layer(x), before + (x @ factors.down.T * factors.scale) @ factors.up.T)


def test_one_compiled_function_serves_layers_with_different_factors():
    torch._dynamo.reset()
    layers = [_layer("linear") for _ in range(4)]
    for seed, layer in enumerate(layers):
        generator = torch.Generator().manual_seed(seed)
        factors = LowRankFactors(
            torch.randn(RANK, IN, generator=generator), torch.randn(OUT, RANK, generator=generator), torch.ones(RANK)
        )
        attach_low_rank(layer, (factors,))
    compiled = torch.compile(lambda layer, x: layer(x) * 2, backend="eager", dynamic=False)
    x = torch.randn(1, 3, IN)
    torch.testing.assert_close(compiled(layers[0], x), layers[0](x) * 2)
    first = torch._dynamo.utils.counters["frames"]["total"]
    for layer in layers[1:]:
        torch.testing.assert_close(compiled(layer, x), layer(x) * 2)
    assert torch._dynamo.utils.counters["frames"]["total"] == first, "a recompile per layer"


def test_factors_kept_elsewhere_are_copied_once_for_a_block_of_calls():
    # The modulation layers' factors live on the host; inside low_rank_on they sit on the compute device
    # for every call (one copy per block, not one per timestep), and the host copy is back afterwards.
    layer = _layer("linear")
    host = _factors()
    attach_low_rank(layer, (host,))
    with low_rank_on([layer, nn.Identity()], torch.device("meta")):
        inside = layer.low_rank[0]
        assert {inside.down.device.type, inside.up.device.type, inside.scale.device.type} == {"meta"}
    assert layer.low_rank == (host,)
    with low_rank_on([layer], torch.device("cpu")):  # already there: nothing is copied
        assert layer.low_rank[0] is host
