"""GGUF's IQ4 types (optim/quant/gguf_iq4.py) through the weight-format registry, on a tiny file written offline:
the registry claims their weights, sizes them from the header and builds their layers, whose expansion equals the
gguf library's own numpy dequantization of the same bytes."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from optim.files.gguf_file import GgufFile
from optim.files.weight_source import WeightSource
from optim.quant.format_registry import GGUF_TYPES_READ, WEIGHT_FORMATS, kept_as_stored, refuse_unread, stored_format
from optim.quant.gguf import gguf_format
from optim.quant.gguf_iq4 import GgufIq4Blocks

ROWS, COLUMNS = 16, 512  # two IQ4_XS super-blocks per row
TYPES = ("IQ4_NL", "IQ4_XS")


def _blocks(type_name: str, seed: int) -> np.ndarray:
    """Random blocks (the library has no numpy quantizer for IQ types) whose float16 scale, the first two bytes
    of each block in both layouts, is small and finite: a plausible weight, and the comparison below does not
    care how the bytes were chosen."""
    rng = np.random.default_rng(seed)
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    blocks = rng.integers(0, 256, size=(ROWS * COLUMNS // block_size, type_size), dtype=np.uint8)
    scale = (rng.uniform(0.5, 1.5, size=blocks.shape[0]) * 0.0005).astype(np.float16)
    blocks[:, 0:2] = scale.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(ROWS, COLUMNS // block_size * type_size)


@pytest.fixture
def tiny_file(tmp_path):
    """A GGUF file with one Linear weight per IQ4 type and their float32 biases; the stored blocks by name."""
    path = tmp_path / "tiny_iq4.gguf"
    writer = gguf.GGUFWriter(str(path), arch="qwen_image")
    stored = {}
    for seed, type_name in enumerate(TYPES):
        stored[f"{type_name}.weight"] = _blocks(type_name, seed)
        writer.add_tensor(
            f"{type_name}.weight", stored[f"{type_name}.weight"], raw_dtype=GGMLQuantizationType[type_name]
        )
        writer.add_tensor(f"{type_name}.bias", np.linspace(-1, 1, ROWS).astype(np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    return path, stored


def test_the_format_is_registered_once():
    assert sum(isinstance(f, GgufIq4Blocks) for f in WEIGHT_FORMATS) == 1
    assert set(TYPES) <= set(GGUF_TYPES_READ)


@pytest.mark.parametrize("type_name", TYPES)
def test_the_registry_reads_the_type_exactly_as_the_gguf_library_does(tiny_file, type_name):
    path, stored = tiny_file
    source = WeightSource([path])
    refuse_unread(source)  # every block type of the file is read
    file, key = source.locate(f"{type_name}.weight")
    info = file.tensors[key]
    assert info.type_name == type_name and info.shape == (ROWS, COLUMNS) and kept_as_stored(source, key, info)

    fmt, tensor = stored_format(source, f"{type_name}.weight")
    assert isinstance(fmt, GgufIq4Blocks) and tensor == info
    bias = torch.from_numpy(np.linspace(-1, 1, ROWS).astype(np.float32))
    layer, recipes = fmt.layer(tensor, source, type_name, (ROWS, COLUMNS), lambda r: bias, torch.float32, "cpu", False)
    assert not recipes and np.array_equal(layer.weight_gguf.numpy(), stored[key])  # the stored bytes, untouched

    expected = quants.dequantize(stored[key], GGMLQuantizationType[type_name])
    assert np.isfinite(expected).all() and np.abs(expected).max() > 0
    assert np.array_equal(layer.dequantized_weight(torch.float32).numpy(), expected)
    x = torch.randn(3, COLUMNS, dtype=torch.float64)
    reference = x @ torch.from_numpy(expected).double().t() + bias.double()
    torch.testing.assert_close(layer(x.float()).double(), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("type_name", TYPES)
def test_sizes_from_the_header_are_the_layers(tiny_file, type_name):
    path, stored = tiny_file
    source = WeightSource([path])
    fmt, tensor = stored_format(source, f"{type_name}.weight")
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    assert gguf_format(type_name).host_bytes_per_weight == type_size / block_size
    empty = fmt.empty(tensor, ROWS, COLUMNS, None, torch.bfloat16)
    assert tuple(empty.weight_gguf.shape) == stored[f"{type_name}.weight"].shape == tensor.block_shape
    assert empty.weight_gguf.dtype == torch.uint8 and empty.weight_gguf.device.type == "meta"

    left, recipes = fmt.layer(tensor, source, type_name, (ROWS, COLUMNS), lambda r: None, torch.float32, "cpu", True)
    assert tuple(left.weight_gguf.shape) == tensor.block_shape and set(recipes) == {f"{type_name}.weight_gguf"}
    assert GgufFile(path).nbytes == sum(a.nbytes for a in stored.values()) + 2 * ROWS * 4
