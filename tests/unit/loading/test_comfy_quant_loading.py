"""Comfy-Org's int8 (ConvRot), mxfp8 and nvfp4 files through the loader, the planner and the engine (tiny models).

A quantized pipeline must compute exactly what a pipeline on the same weights expanded to float32 computes (the
expansion is tested against ComfyUI's formulas in tests/unit/quant/test_comfy_quant_formats.py; the engine only
moves the stored bytes), stream them from the files when host memory is short, size itself from the headers as it
measures itself, and refuse what it cannot do with the fix.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_files import COMFY_QUANT_FILES, MODELS, split_files

from optim import EditJob, LayeredJob, LoadRequest, PipelineCache, load_pipeline, run_edit, run_layered
from optim.errors import QwenFitError
from optim.files.comfy_quant import comfy_quant_layers
from optim.files.safetensors_file import SafetensorsFile
from optim.planning.header_sizes import sizes_from_headers
from optim.planning.load_request import describe
from optim.quant.comfy_quant import ComfyQuantLinear
from optim.quant.comfy_quant_formats import comfy_quant_linear
from optim.settings import OffloadSettings, PrecisionSettings

CPU = torch.device("cpu")
IMAGE = Image.new("RGB", (96, 64), (200, 80, 40))
EDIT_JOB = EditJob(prompt="snow", steps=2, seed=1, width=64, height=64)


def _run(loaded, variant: str) -> torch.Tensor:
    if variant == "layered":
        job = LayeredJob(prompt="a poster", layers=2, resolution=640, steps=2, seed=3)
        return run_layered(loaded, IMAGE.convert("RGBA"), job).rgb
    return run_edit(loaded, [IMAGE], EDIT_JOB).image


def _expanded_copy(path, out_path) -> None:
    """The file with every quantized layer replaced by its float32 expansion (ComfyUI's key names kept)."""
    file = SafetensorsFile(path)
    layers = comfy_quant_layers(file)
    stored_keys = {key for spec in layers.values() for key in (*spec.stored_keys, f"{spec.layer}.comfy_quant")}
    tensors = {key: file.read(key) for key in file.tensors if key not in stored_keys}
    for layer, spec in layers.items():
        stored = {key.removeprefix(layer + "."): file.read(key) for key in spec.stored_keys}
        out_features = tensors[f"{layer}.bias"].shape[0]
        in_features = stored["weight"].shape[1] * (2 if spec.format == "nvfp4" else 1)
        linear = comfy_quant_linear(spec, stored, out_features, in_features, None)
        tensors[f"{layer}.weight"] = linear.dequantized_weight(torch.float32)
    save_file(tensors, str(out_path))


@pytest.mark.parametrize(("name", "variant", "fmt"), [COMFY_QUANT_FILES[i] for i in (0, 4, 5, 9)], ids=lambda v: str(v))
def test_a_quantized_pipeline_computes_what_its_expanded_weights_compute(tmp_path, name, variant, fmt) -> None:
    source = split_files(name, variant)
    loaded = load_pipeline(LoadRequest(source))
    assert loaded.variant.value == variant
    kinds = {m.format_name for m in loaded.pipeline.transformer.modules() if isinstance(m, ComfyQuantLinear)}
    assert kinds == {fmt}
    plan = loaded.describe_default_plan()
    assert fmt in plan and "expanded" in plan  # the plan names the stored format and how it computes
    got = _run(loaded, variant)
    assert torch.isfinite(got).all()
    loaded.engine.release()

    expanded = tmp_path / name.replace(".safetensors", "_expanded.safetensors")  # the name tells 2511 from 2509
    _expanded_copy(source.transformer, expanded)
    dense = load_pipeline(LoadRequest(replace(source, transformer=expanded)))
    assert torch.equal(got, _run(dense, variant))


def test_quantized_layers_stream_from_the_files_when_host_memory_is_short() -> None:
    name, variant, _ = COMFY_QUANT_FILES[6]  # 2511 nvfp4
    in_memory = load_pipeline(LoadRequest(split_files(name, variant), offload=OffloadSettings(host_budget="unlimited")))
    expected = _run(in_memory, variant)
    in_files = load_pipeline(LoadRequest(split_files(name, variant), offload=OffloadSettings(host_budget="minimal")))
    assert torch.equal(_run(in_files, variant), expected)


@pytest.mark.parametrize(("name", "variant", "fmt"), [COMFY_QUANT_FILES[i] for i in (1, 2, 7)], ids=lambda v: str(v))
def test_sizes_from_comfy_quant_headers_equal_what_the_engine_measures(name, variant, fmt) -> None:
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
        (PrecisionSettings(transformer="nf4"), "Set the transformer precision to auto"),
    ],
    ids=["bf16", "nf4"],
)
def test_quantized_weights_compute_as_stored_and_other_choices_name_the_fix(precision, words) -> None:
    with pytest.raises(QwenFitError, match=words):
        load_pipeline(LoadRequest(split_files(*COMFY_QUANT_FILES[0][:2]), precision=precision))


@pytest.mark.parametrize("speed", ["fast", "fastest"])
@pytest.mark.parametrize("index", [2, 3], ids=["mxfp8", "nvfp4"])
def test_the_fast_rungs_on_mxfp8_and_nvfp4_are_refused_with_the_fix(index: int, speed: str) -> None:
    request = LoadRequest(split_files(*COMFY_QUANT_FILES[index][:2]), precision=PrecisionSettings(speed=speed))
    words = f"speed {speed} is not offered.*need Blackwell.*Pick speed exact.*int8 \\(ConvRot\\) or fp8 release"
    with pytest.raises(QwenFitError, match=words):
        load_pipeline(request)


@pytest.mark.parametrize("index", [0, 1], ids=["int8-convrot", "int8"])
def test_an_int8_file_takes_the_fast_rung_in_place_as_stored(index: int) -> None:
    """Fast multiplies the stored int8 weights (ComfyUI's product, tests/unit/quant/test_comfy_quant_formats.py):
    nothing is re-quantized, so exact and fast switch without loading again and give the images of fresh loads;
    fast stays within 1e-2 of exact per pixel (0..1) on the tiny model (measured 1.0e-3 ConvRot, 8.4e-4 plain)."""
    name, variant, _ = COMFY_QUANT_FILES[index]
    source = split_files(name, variant)
    cache = PipelineCache()
    images = {}
    for speed in ("exact", "fast", "exact"):
        loaded = cache.get(LoadRequest(source, precision=PrecisionSettings(speed=speed)))
        result = run_edit(loaded, [IMAGE], EDIT_JOB)
        assert f"speed {speed}: {'int8 W8A8' if speed == 'fast' else 'weights expanded'}" in result.record.plan
        if speed == "fast":  # the pack's own int8 rung's benchmark figure is not this product's
            assert (
                "not benchmarked on this file format" in result.record.plan and "benchmark:" not in result.record.plan
            )
        if speed in images:  # the second exact, after switching back
            assert torch.equal(result.image, images[speed])
        images[speed] = result.image
    assert cache.loads == 1
    blocks = loaded.pipeline.transformer.transformer_blocks
    assert not any(m.fast for m in blocks.modules() if isinstance(m, ComfyQuantLinear))  # back to exact
    cache.clear()
    alone = load_pipeline(LoadRequest(source, precision=PrecisionSettings(speed="fast")))
    assert torch.equal(run_edit(alone, [IMAGE], EDIT_JOB).image, images["fast"])
    alone.engine.release()
    fast, exact = images["fast"].float(), images["exact"].float()
    assert torch.isfinite(fast).all() and not torch.equal(fast, exact)
    assert (fast - exact).abs().max() <= 1e-2


def _bad_copy(tmp_path, name: str, change) -> object:
    tensors = load_file(str(MODELS / "diffusion_models" / name))
    change(tensors)
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def test_an_unknown_format_name_is_refused_with_the_fix(tmp_path) -> None:
    name, variant, _ = COMFY_QUANT_FILES[2]
    key = "transformer_blocks.0.attn.to_q.comfy_quant"

    def rename(tensors):
        tensors[key] = torch.tensor(list(b'{"format": "svdquant_w4a4"}'), dtype=torch.uint8)

    path = _bad_copy(tmp_path, name, rename)
    with pytest.raises(QwenFitError, match="'svdquant_w4a4'.*QwenFit reads int8.*mxfp8, nvfp4"):
        load_pipeline(LoadRequest(replace(split_files(name, variant), transformer=path)))


def test_a_truncated_file_is_refused_with_the_fix(tmp_path) -> None:
    name, variant, _ = COMFY_QUANT_FILES[3]
    data = (MODELS / "diffusion_models" / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) - 4096])
    with pytest.raises(QwenFitError, match="download it again"):
        load_pipeline(LoadRequest(replace(split_files(name, variant), transformer=path)))


def test_a_scale_of_the_wrong_size_is_refused_with_the_fix(tmp_path) -> None:
    name, variant, _ = COMFY_QUANT_FILES[3]
    key = "transformer_blocks.1.img_mlp.net.2.weight_scale"

    def shrink(tensors):
        tensors[key] = tensors[key][:64].contiguous()

    path = _bad_copy(tmp_path, name, shrink)
    with pytest.raises(QwenFitError, match="does not fit the model's 32x128 layer.*Pick the matching file"):
        load_pipeline(LoadRequest(replace(split_files(name, variant), transformer=path)))
