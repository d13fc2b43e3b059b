"""GGUF transformer files (ComfyUI-GGUF's) through the real server, on the tiny models: every GGML type the
pack reads loads for Edit-2509, Edit-2511 and Layered and gives an image; bad GGUF files and choices a GGUF file
cannot take get a message that names the fix, and the next prompt runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_bad_input_corpus import (
    assert_next_prompt_runs,
    assert_refused,
    edit_graph,
    layered_graph,
    loader_graph,
    queue,
)
from tiny_files import GGUF_FILES, MODELS

from optim.files.gguf_file import PLAIN_TYPES, GgufFile
from tools.gguf_files import ALL_TYPES, retyped_gguf, write_gguf

QUANTIZED_TYPES = tuple(t for t in ALL_TYPES if t not in PLAIN_TYPES)  # the block types of the tiny files


def _report(result) -> str:
    return "\n".join(t for out in result.outputs.values() for t in out.get("text", []))


def test_the_loader_lists_gguf_files(comfy):
    info = comfy.object_info()["QwenFitOptimizedLoader"]["input"]
    choices = info["required"]["model"][0]
    choices = choices if isinstance(choices, list) else info["required"]["model"][1]["options"]
    assert {name for name, _ in GGUF_FILES} <= set(choices)


@pytest.mark.parametrize(("name", "variant"), GGUF_FILES, ids=[name for name, _ in GGUF_FILES])
def test_every_gguf_type_gives_an_image(comfy, name: str, variant: str):
    graph = layered_graph(name) if variant == "layered" else edit_graph(name, width=64, height=64)
    graph["5"] = {"class_type": "QwenFitVRAMMonitor", "inputs": {"anything": ["3", 1]}}
    result = comfy.run(graph)
    assert result.status == "success", result.error_text()  # the pack refuses non-finite images itself
    assert result.files
    report = _report(result)
    stored = {t.type_name for t in GgufFile(MODELS / "diffusion_models" / name).tensors.values() if t.quantized}
    if name.endswith(("_BF16.gguf", "_F16.gguf")):  # whole float files (unsloth ships them): nothing to expand
        assert not stored and "GGUF float weights (F16/BF16), computed as stored" in report, report
        return
    assert stored and all(f"gguf {t}" in report for t in stored), report  # the plan names each stored type
    assert "GGUF blocks expanded" in report, report
    if "every_type" in name:  # every 32-block type; the K types (256 blocks) each have a file of their own
        assert {t for t in QUANTIZED_TYPES if not t.endswith("_K")} <= stored, stored
    label = name.removesuffix(".gguf").rsplit("_", 2)[-2:]
    if "_".join(label) in QUANTIZED_TYPES:  # a file named after one type holds it
        assert "_".join(label) in stored, stored


@pytest.fixture(scope="module")
def bad_ggufs(comfy, tmp_path_factory):
    """Bad GGUF files in the host's diffusion_models folder; removed when the module is done."""
    folder = comfy.base / "models" / "diffusion_models"
    scratch = tmp_path_factory.mktemp("gguf")
    written: list[Path] = []

    def put(name: str, data: bytes) -> None:
        (folder / name).write_bytes(data)
        written.append(folder / name)

    good = (MODELS / "diffusion_models" / GGUF_FILES[0][0]).read_bytes()
    put("gguf_truncated-Q8_0.gguf", good[: len(good) // 2])
    put("gguf_header_cut-Q8_0.gguf", good[:24])
    put(
        "gguf_safetensors_renamed.gguf",
        (MODELS / "diffusion_models" / "qwenfit_tiny_edit_2509_bf16.safetensors").read_bytes(),
    )
    flux = scratch / "flux.gguf"
    write_gguf(flux, {"double_blocks.0.img_attn.qkv.weight": ("Q8_0", np.zeros((32, 64), np.float32))}, arch="flux")
    put("gguf_flux1-dev-Q8_0.gguf", flux.read_bytes())
    sd3 = scratch / "sd3.gguf"
    write_gguf(sd3, {"joint_blocks.0.x_block.attn.qkv.weight": ("Q8_0", np.zeros((32, 64), np.float32))}, arch="sd3")
    put("gguf_sd3.5_large-Q8_0.gguf", sd3.read_bytes())
    unread = scratch / "q8_1.gguf"  # a whole transformer, one of its weights in a block type no format reads
    retyped_gguf(MODELS / "diffusion_models" / GGUF_FILES[0][0], unread, "Q8_1")
    put("gguf_q8_1.gguf", unread.read_bytes())
    yield
    for path in written:
        path.unlink(missing_ok=True)


BAD = [
    ("gguf_truncated-Q8_0.gguf", ("gguf_truncated-Q8_0.gguf", "truncated or corrupt: download it again")),
    ("gguf_header_cut-Q8_0.gguf", ("gguf_header_cut-Q8_0.gguf", "not a readable GGUF file")),
    ("gguf_flux1-dev-Q8_0.gguf", ("GGUF of 'flux', not Qwen-Image", "Pick a Qwen-Image-Edit")),
    ("gguf_sd3.5_large-Q8_0.gguf", ("GGUF of 'sd3', not Qwen-Image", "Pick a Qwen-Image-Edit")),
    ("gguf_q8_1.gguf", ("as Q8_1, a GGUF type QwenFit does not read", "Q4_K_M")),
]


@pytest.mark.parametrize(("name", "words"), BAD, ids=[name for name, _ in BAD])
def test_a_bad_gguf_is_refused_with_the_fix(comfy, bad_ggufs, name, words):
    assert_refused(queue(comfy, loader_graph(name)), words)
    assert_next_prompt_runs(comfy)


@pytest.mark.parametrize(
    ("precision", "words"),
    [
        ({"transformer": "bf16"}, ("is a GGUF file", "Set the transformer precision to auto")),
        ({"speed": "fast"}, ("speed fast needs fp8 or int8 weights", "Pick speed exact")),
    ],
    ids=["precision-bf16", "speed-fast"],
)
def test_choices_a_gguf_cannot_take_name_the_fix(comfy, precision, words):
    graph = loader_graph(GGUF_FILES[0][0], precision=["5", 0])
    settings = {"transformer": "auto", "text_encoder": "auto", "vae": "auto", "speed": "auto", **precision}
    graph["5"] = {"class_type": "QwenFitPrecisionSelector", "inputs": settings}
    assert_refused(queue(comfy, graph), words)
    assert_next_prompt_runs(comfy)


def test_a_file_is_read_as_what_its_bytes_are_not_as_its_name_says(comfy, bad_ggufs):
    """A safetensors file saved under a .gguf name is a good safetensors file: it loads as one."""
    result = queue(comfy, loader_graph("gguf_safetensors_renamed.gguf"))
    assert result.status == "success", result.error_text()
    assert "gguf Q" not in _report(result) and "QwenFit plan" in _report(result)
