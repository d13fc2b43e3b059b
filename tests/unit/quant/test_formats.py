"""Each weight format is one class that owns its buffers, byte sizes, expansion and matmul."""

from __future__ import annotations

import pytest
import torch

from optim.quant.compressed_linear import CompressedLinear, compressed_layers
from optim.quant.formats import FORMATS, QUANTIZED, quantize_linears, size_as_quantized
from optim.settings import COMPRESSED_PRECISIONS


def test_every_compressed_precision_has_its_format_class():
    assert set(FORMATS) == set(COMPRESSED_PRECISIONS)
    names = [cls.format_name for cls in FORMATS.values()]
    assert len(names) == len(set(names))  # plans tell the formats apart by these names


@pytest.mark.parametrize("kind", sorted(QUANTIZED))
def test_the_meta_layer_is_the_real_layer_without_data(kind):
    """What the header-only sizes build (``empty``) has the buffers a real quantized layer has."""
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 128).to(torch.bfloat16)
    real = QUANTIZED[kind](dense.weight.data, dense.bias.data)
    empty = QUANTIZED[kind].empty(128, 256, dense.bias, torch.bfloat16)
    shapes = lambda layer: {n: (tuple(b.shape), b.dtype) for n, b in layer.named_buffers()}  # noqa: E731
    assert shapes(empty) == shapes(real)
    assert all(b.device.type == "meta" for b in empty.buffers())


@pytest.mark.parametrize("kind", sorted(QUANTIZED))
def test_quantizing_a_module_and_sizing_it_agree(kind):
    def model() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128))

    quantized, sized = model(), model()
    assert quantize_linears(quantized, kind, lambda name: name == "2") == 1
    size_as_quantized(sized, kind, lambda name: name == "2")
    assert [type(m) for m in compressed_layers(quantized)] == [type(m) for m in compressed_layers(sized)]
    assert isinstance(quantized[0], torch.nn.Linear) and isinstance(quantized[2], CompressedLinear)
    x = torch.randn(3, 128)
    torch.testing.assert_close(quantized(x), model()(x), rtol=0.2, atol=0.05)
