"""GGUF transformer files through the loader, the planner and the engine, on the tiny models.

A GGUF pipeline must compute exactly what a pipeline on the same weights expanded to float32 computes (the
expansion equals the gguf library's numpy dequantization; the engine only moves the blocks), stream the blocks
from the files as stored when host memory is short, and size itself from the headers as it measures itself.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants
from PIL import Image
from safetensors.torch import save_file
from tiny_files import GGUF_FILES, split_files

from optim import EditJob, LayeredJob, LoadRequest, load_pipeline, run_edit, run_layered
from optim.errors import QwenFitError
from optim.files.gguf_file import GgufFile
from optim.planning.header_sizes import sizes_from_headers
from optim.planning.load_request import describe
from optim.quant.gguf import GgufLinear
from optim.settings import OffloadSettings, PrecisionSettings

CPU = torch.device("cpu")
IMAGE = Image.new("RGB", (96, 64), (200, 80, 40))
EDIT_JOB = EditJob(prompt="snow", steps=2, seed=1, width=64, height=64)


def _run(loaded, variant: str) -> torch.Tensor:
    if variant == "layered":
        job = LayeredJob(prompt="a poster", layers=2, resolution=640, steps=2, seed=3)
        return run_layered(loaded, IMAGE.convert("RGBA"), job).rgb
    return run_edit(loaded, [IMAGE], EDIT_JOB).image


def _expanded_copy(gguf_path, out_path) -> None:
    """The GGUF file's weights, each dequantized by the gguf library (numpy), as a float32 safetensors file."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    tensors = {}
    for t in reader.tensors:
        kind = GGMLQuantizationType(t.tensor_type)
        values = quants.dequantize(np.array(t.data), kind).astype(np.float32)
        tensors[t.name] = torch.from_numpy(values.reshape(tuple(reversed(t.shape.tolist()))))
    del reader
    save_file(tensors, str(out_path))


@pytest.mark.parametrize(("name", "variant"), [GGUF_FILES[0], GGUF_FILES[5], GGUF_FILES[12], GGUF_FILES[13], GGUF_FILES[14], GGUF_FILES[15]],
                         ids=lambda v: v if isinstance(v, str) and v.endswith(".gguf") else None)  # fmt: skip
def test_a_gguf_pipeline_computes_what_its_expanded_weights_compute(tmp_path, name: str, variant: str) -> None:
    gguf_source = split_files(name, variant)
    loaded = load_pipeline(LoadRequest(gguf_source))
    assert loaded.variant.value == variant
    kinds = {type(m).type_name for m in loaded.pipeline.transformer.modules() if isinstance(m, GgufLinear)}
    stored = {t.type_name for t in GgufFile(gguf_source.transformer).tensors.values() if t.quantized}
    assert kinds == stored and kinds  # every quantized type of the file stays quantized in the pipeline
    got = _run(loaded, variant)
    loaded.engine.release()

    expanded = tmp_path / name.replace(".gguf", "_expanded.safetensors")  # the name tells 2511 from 2509
    _expanded_copy(gguf_source.transformer, expanded)
    dense = load_pipeline(LoadRequest(replace(gguf_source, transformer=expanded)))
    assert torch.equal(got, _run(dense, variant))


def test_gguf_blocks_stream_from_the_files_when_host_memory_is_short() -> None:
    name, variant = GGUF_FILES[12]  # 2511, Q4_K and Q8_0 mixed
    in_memory = load_pipeline(LoadRequest(split_files(name, variant), offload=OffloadSettings(host_budget="unlimited")))
    expected = _run(in_memory, variant)
    in_files = load_pipeline(LoadRequest(split_files(name, variant), offload=OffloadSettings(host_budget="minimal")))
    assert torch.equal(_run(in_files, variant), expected)


@pytest.mark.parametrize(("name", "variant"), [GGUF_FILES[3], GGUF_FILES[12], GGUF_FILES[14]], ids=lambda v: str(v))
def test_sizes_from_gguf_headers_equal_what_the_engine_measures(name: str, variant: str) -> None:
    request = LoadRequest(split_files(name, variant))
    predicted = sizes_from_headers(describe(request), request.precision, CPU)
    loaded = load_pipeline(request)
    try:
        assert predicted == loaded.engine.sizes
    finally:
        loaded.engine.release()


@pytest.mark.parametrize(
    ("precision", "words"),
    [
        (PrecisionSettings(transformer="bf16"), "Set the transformer precision to auto"),
        (PrecisionSettings(transformer="int8"), "Set the transformer precision to auto"),
        (PrecisionSettings(speed="fast"), "Pick speed exact"),
        (PrecisionSettings(speed="fastest"), "Pick speed exact"),
    ],
    ids=["bf16", "int8", "fast", "fastest"],
)
def test_gguf_weights_compute_as_stored_and_other_choices_name_the_fix(precision, words) -> None:
    with pytest.raises(QwenFitError, match=words):
        load_pipeline(LoadRequest(split_files(*GGUF_FILES[0]), precision=precision))


def test_a_gguf_of_another_model_is_refused_before_anything_loads(tmp_path) -> None:
    from tools.gguf_files import write_gguf

    path = tmp_path / "flux1-dev-Q8_0.gguf"
    write_gguf(path, {"double_blocks.0.img_attn.qkv.weight": ("Q8_0", np.zeros((32, 64), np.float32))}, arch="flux")
    source = split_files(*GGUF_FILES[0])
    with pytest.raises(QwenFitError, match="GGUF of 'flux', not Qwen-Image"):
        load_pipeline(LoadRequest(replace(source, transformer=path)))
