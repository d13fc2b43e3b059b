"""GGUF weights (ComfyUI-GGUF's Qwen-Image files): the reader's checks and the expansion of every GGML type the
pack reads, against the gguf library's own numpy dequantization of the same bytes (exact: both compute in
float32 from float16 scales)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from optim.errors import QwenFitError
from optim.files.gguf_file import GgufFile, is_gguf
from optim.files.weight_source import WeightSource
from optim.quant.format_registry import refuse_unread, stored_format
from optim.quant.gguf import GgufBlocks, GgufLinear, gguf_format, gguf_linear
from tools.gguf_files import write_gguf

ROWS, COLUMNS = 16, 512  # two K-quant super-blocks per row


def _weights(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((ROWS, COLUMNS)) * 0.05).astype(np.float32)


@pytest.mark.parametrize("type_name", GgufBlocks.type_names)
def test_each_type_expands_exactly_as_the_gguf_library_does(tmp_path, type_name: str) -> None:
    path = tmp_path / f"tiny_{type_name}.gguf"
    bias = np.linspace(-1, 1, ROWS).astype(np.float32)
    stored = write_gguf(path, {"proj.weight": (type_name, _weights()), "proj.bias": ("F32", bias)})
    file = GgufFile(path)
    info = file.tensors["proj.weight"]
    assert file.architecture == "qwen_image" and info.type_name == type_name and info.quantized
    assert info.shape == (ROWS, COLUMNS)  # torch's order, although GGML lists the innermost dimension first
    blocks = file.read_raw("proj.weight")
    assert np.array_equal(blocks.numpy(), stored["proj.weight"])  # the stored bytes, untouched

    layer = gguf_linear(info, blocks, file.read_raw("proj.bias"))
    expected = quants.dequantize(stored["proj.weight"], GGMLQuantizationType[type_name])
    assert np.isfinite(expected).all()
    assert np.array_equal(layer.dequantized_weight(torch.float32).numpy(), expected)
    x = torch.randn(3, COLUMNS, dtype=torch.float64)
    reference = x @ torch.from_numpy(expected).double().t() + torch.from_numpy(bias).double()
    torch.testing.assert_close(layer(x.float()).double(), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("type_name", "dtype"), [("F32", torch.float32), ("F16", torch.float16), ("BF16", torch.bfloat16)]
)
def test_plain_types_read_in_their_own_dtype(tmp_path, type_name: str, dtype: torch.dtype) -> None:
    path = tmp_path / "plain.gguf"
    values = _weights(1)
    write_gguf(path, {"norm.weight": (type_name, values)})
    info = GgufFile(path).tensors["norm.weight"]
    got = GgufFile(path).read_raw("norm.weight")
    assert not info.quantized and got.dtype == dtype and tuple(got.shape) == (ROWS, COLUMNS)
    assert torch.equal(got, torch.from_numpy(values).to(dtype))


def test_format_classes_know_their_sizes_per_type() -> None:
    q4k, q8 = gguf_format("Q4_K"), gguf_format("Q8_0")
    assert issubclass(q4k, GgufLinear) and q4k is gguf_format("Q4_K")  # one class per type
    assert q4k.format_name == "gguf Q4_K" and q4k.host_bytes_per_weight == 144 / 256
    assert q8.host_bytes_per_weight == 34 / 32
    empty = q4k.empty(3072, 12288, None, torch.bfloat16)
    assert tuple(empty.weight_gguf.shape) == (3072, 12288 // 256 * 144) and empty.weight_gguf.dtype == torch.uint8
    with pytest.raises(ValueError, match="multiple of 256"):
        q4k.empty(8, 100, None, torch.bfloat16)
    with pytest.raises(ValueError, match="not a quantized GGUF type diffusers can expand"):
        gguf_format("Q8_1")


def test_a_truncated_file_is_refused_with_the_fix(tmp_path) -> None:
    path = tmp_path / "cut.gguf"
    write_gguf(path, {"proj.weight": ("Q8_0", _weights())})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(QwenFitError, match="truncated or corrupt: download it again"):
        GgufFile(path)
    path.write_bytes(data[:20])  # the header itself cut
    with pytest.raises(QwenFitError, match="not a readable GGUF file"):
        GgufFile(path)


def test_a_file_that_is_not_gguf_is_refused(tmp_path) -> None:
    path = tmp_path / "renamed.gguf"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")  # a safetensors header under a .gguf name
    assert not is_gguf(path)
    with pytest.raises(QwenFitError, match="does not start with GGUF"):
        GgufFile(path)


def test_a_type_the_pack_does_not_read_is_named_with_those_it_does(tmp_path) -> None:
    """The reader keeps any block type; the weight formats refuse those none of them reads, naming the rest."""
    import gguf

    path = tmp_path / "q8_1.gguf"
    writer = gguf.GGUFWriter(str(path), arch="qwen_image")
    block_size, type_size = gguf.GGML_QUANT_SIZES[GGMLQuantizationType.Q8_1]
    writer.add_tensor("proj.weight", np.zeros((ROWS, COLUMNS // block_size * type_size), np.uint8),
                      raw_dtype=GGMLQuantizationType.Q8_1)  # fmt: skip
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    assert GgufFile(path).tensors["proj.weight"].quantized
    source = WeightSource([path])
    words = r"as Q8_1, a GGUF type QwenFit does not read \(.*Q4_K.*\)"
    with pytest.raises(QwenFitError, match=words):
        refuse_unread(source)
    with pytest.raises(QwenFitError, match=words):
        stored_format(source, "proj.weight")


def test_an_element_type_no_weight_file_holds_is_refused_by_the_reader(tmp_path) -> None:
    import gguf

    path = tmp_path / "i32.gguf"
    writer = gguf.GGUFWriter(str(path), arch="qwen_image")
    writer.add_tensor("proj.weight", np.zeros((ROWS, COLUMNS), np.int32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(QwenFitError, match=r"as I32, a GGUF type QwenFit does not read"):
        GgufFile(path)


def test_a_gguf_of_another_model_is_named(tmp_path) -> None:
    path = tmp_path / "flux1-dev-Q4_K_S.gguf"
    write_gguf(path, {"double_blocks.0.img_attn.qkv.weight": ("Q8_0", _weights())}, arch="flux")
    file = GgufFile(path)
    with pytest.raises(QwenFitError, match="GGUF of 'flux', not Qwen-Image"):
        file.check_architecture()
