"""Comfy-Org's quantized safetensors files (int8 with and without ConvRot, mxfp8, nvfp4) through the real server,
on the tiny models: every format loads for Edit-2509, Edit-2511 and Layered and gives an image with the plan naming
the stored format; bad files and choices such a file cannot take get a message that names the fix, and the next
prompt runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_bad_input_corpus import (
    assert_next_prompt_runs,
    assert_refused,
    edit_graph,
    layered_graph,
    loader_graph,
    queue,
)
from tiny_files import COMFY_QUANT_FILES, MODELS


def _report(result) -> str:
    return "\n".join(t for out in result.outputs.values() for t in out.get("text", []))


def test_the_loader_lists_comfy_quant_files(comfy):
    info = comfy.object_info()["QwenFitOptimizedLoader"]["input"]
    choices = info["required"]["model"][0]
    choices = choices if isinstance(choices, list) else info["required"]["model"][1]["options"]
    assert {name for name, _, _ in COMFY_QUANT_FILES} <= set(choices)


@pytest.mark.parametrize(("name", "variant", "fmt"), COMFY_QUANT_FILES, ids=[n for n, _, _ in COMFY_QUANT_FILES])
def test_every_comfy_quant_file_gives_an_image(comfy, name: str, variant: str, fmt: str):
    graph = layered_graph(name) if variant == "layered" else edit_graph(name, width=64, height=64)
    graph["5"] = {"class_type": "QwenFitVRAMMonitor", "inputs": {"anything": ["3", 1]}}
    result = comfy.run(graph)
    assert result.status == "success", result.error_text()  # the pack refuses non-finite images itself
    assert result.files
    report = _report(result)
    assert fmt in report and "weights expanded to the compute dtype" in report, report


@pytest.fixture(scope="module")
def bad_files(comfy):
    """Bad quantized files in the host's diffusion_models folder; removed when the module is done."""
    folder = comfy.base / "models" / "diffusion_models"
    written: list[Path] = []
    good_path = MODELS / "diffusion_models" / COMFY_QUANT_FILES[3][0]  # 2509 nvfp4
    good = good_path.read_bytes()
    (folder / "cq_truncated_nvfp4.safetensors").write_bytes(good[: len(good) - 4096])
    written.append(folder / "cq_truncated_nvfp4.safetensors")
    tensors = load_file(str(good_path))
    tensors["transformer_blocks.0.attn.to_q.comfy_quant"] = torch.tensor(
        list(b'{"format": "awq_w4a16", "group_size": 64}'), dtype=torch.uint8
    )
    save_file(tensors, str(folder / "cq_unknown_format.safetensors"))
    written.append(folder / "cq_unknown_format.safetensors")
    yield
    for path in written:
        path.unlink(missing_ok=True)


BAD = [
    ("cq_truncated_nvfp4.safetensors", ("cq_truncated_nvfp4.safetensors", "download it again")),
    ("cq_unknown_format.safetensors", ("as 'awq_w4a16'", "QwenFit reads int8 (with or without ConvRot), mxfp8")),
]


@pytest.mark.parametrize(("name", "words"), BAD, ids=[name for name, _ in BAD])
def test_a_bad_quantized_file_is_refused_with_the_fix(comfy, bad_files, name, words):
    assert_refused(queue(comfy, loader_graph(name)), words)
    assert_next_prompt_runs(comfy)


@pytest.mark.parametrize(
    ("index", "precision", "words"),
    [
        (0, {"transformer": "bf16"}, ("int8_convrot.safetensors stores its weights", "Set the transformer precision")),
        (2, {"speed": "fast"}, ("speed fast is not offered", "need Blackwell", "Pick speed exact")),
    ],
    ids=["precision-bf16", "mxfp8-speed-fast"],
)
def test_choices_a_quantized_file_cannot_take_name_the_fix(comfy, index, precision, words):
    graph = loader_graph(COMFY_QUANT_FILES[index][0], precision=["5", 0])
    settings = {"transformer": "auto", "text_encoder": "auto", "vae": "auto", "speed": "auto", **precision}
    graph["5"] = {"class_type": "QwenFitPrecisionSelector", "inputs": settings}
    assert_refused(queue(comfy, graph), words)
    assert_next_prompt_runs(comfy)
