"""The one weight-format registry (optim/quant/format_registry.py): every format registered once; formats asked
for by a precision choice build the same layers as their sizes say; formats the files decide claim exactly their
weights of the tiny files' real headers, the file-key view (host plan) agreeing with the module-key view
(loader)."""

from __future__ import annotations

import pytest
import torch
from tiny_files import COMFY_QUANT_FILES, GGUF_FILES, split_files

from optim.files.sources import describe_split_files
from optim.quant.compressed_linear import CompressedLinear, compressed_layers
from optim.quant.format_registry import (
    WEIGHT_FORMATS,
    format_for,
    kept_as_stored,
    quantize_linears,
    quantized_on_load,
    size_as_quantized,
    stored_format,
)
from optim.settings import COMPRESSED_PRECISIONS, FP8, FP8_FAST, INT8, NF4

ON_LOAD = sorted(c for c in COMPRESSED_PRECISIONS if quantized_on_load(c) is not None)


def test_every_format_is_registered_once_and_every_compressed_precision_has_one():
    names = [fmt.name for fmt in WEIGHT_FORMATS]
    assert len(names) == len(set(names)) and len({type(f) for f in WEIGHT_FORMATS}) == len(WEIGHT_FORMATS)
    assert all(format_for(c) is not None for c in COMPRESSED_PRECISIONS)
    assert format_for("bf16") is None and format_for("auto") is None and quantized_on_load(FP8) is None
    layer_names = [format_for(c).layer_class.format_name for c in COMPRESSED_PRECISIONS]
    assert len(layer_names) == len(set(layer_names))  # plans tell the formats apart by these names
    assert ON_LOAD == sorted((FP8_FAST, INT8, NF4))


@pytest.mark.parametrize("kind", ON_LOAD)
def test_the_meta_layer_is_the_real_layer_without_data(kind):
    """What the header-only sizes build (``empty``) has the buffers a real quantized layer has."""
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 128).to(torch.bfloat16)
    fmt = quantized_on_load(kind)
    real = fmt.layer_class(dense.weight.data, dense.bias.data)
    empty = fmt.empty(None, 128, 256, dense.bias, torch.bfloat16)
    shapes = lambda layer: {n: (tuple(b.shape), b.dtype) for n, b in layer.named_buffers()}  # noqa: E731
    assert shapes(empty) == shapes(real)
    assert all(b.device.type == "meta" for b in empty.buffers())


@pytest.mark.parametrize("kind", ON_LOAD)
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


def test_a_choice_that_quantizes_nothing_on_load_is_refused():
    with pytest.raises(ValueError, match="no format quantized on load"):
        quantize_linears(torch.nn.Linear(4, 4), "bf16", lambda name: True)


CASES = [
    *[
        (name, variant, "GGUF blocks")
        for name, variant in GGUF_FILES
        if name.endswith(("2509_Q8_0.gguf", "every_type.gguf"))
    ],
    *[(name, variant, "Comfy-Org quantized layers") for name, variant, _ in COMFY_QUANT_FILES[:2]],
    ("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509", None),
    ("qwenfit_tiny_edit_2511_fp8mixed.safetensors", "edit-2511", None),
]


@pytest.mark.parametrize(("name", "variant", "family"), CASES, ids=[c[0] for c in CASES])
def test_each_stored_weight_belongs_to_its_format_only(name, variant, family):
    source = describe_split_files(split_files(name, variant)).transformer
    block_weights = [k for k in source.file_keys() if ".to_q." in k and k.endswith("weight")]
    assert block_weights, "no attention weight found: the key names changed"
    for file_key in block_weights:
        module_key = next(k for k in (file_key, file_key.removeprefix("model.diffusion_model.")) if source.has(k))
        file, stored_key = source.locate(module_key)
        info = file.tensors[stored_key]
        # A GGUF file keeps some small tensors as F16/BF16 (the converter's rules): those are plain weights.
        expected = None if family == "GGUF blocks" and not info.quantized else family
        found = stored_format(source, module_key)
        assert (found[0].name if found else None) == expected, file_key
        assert kept_as_stored(source, stored_key, info) == (expected is not None)
    if family == "GGUF blocks":  # every quantized tensor of the file is the family's
        quantized = [k for f in source.files for k, t in f.tensors.items() if t.quantized]
        assert quantized and all(kept_as_stored(source, k, source.files[0].tensors[k]) for k in quantized)
