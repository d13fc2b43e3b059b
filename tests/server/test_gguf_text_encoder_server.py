"""ComfyUI-GGUF's Qwen2.5-VL text encoders through the real server: listed on the loader (their mmproj projectors
not), refused when chosen with the safetensors file to use instead, a text encoder without its projector told which
file is missing; nothing loads, and the next prompt runs. The files are tiny llama.cpp-named GGUF files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_bad_input_corpus import EDIT, assert_next_prompt_runs, assert_refused, loader_graph, queue

from tools.gguf_files import write_gguf

TE = "Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf"
MMPROJ = "Qwen2.5-VL-7B-Instruct-mmproj-F16.gguf"
LONELY = "Qwen2.5-VL-3B-Instruct-Q8_0.gguf"  # no projector beside it
FIX = "qwen_2.5_vl_7b_fp8_scaled.safetensors"


@pytest.fixture(scope="module")
def gguf_text_encoders(comfy, tmp_path_factory):
    """The GGUF files in the host's text_encoders folder; removed when the module is done."""
    folder = comfy.base / "models" / "text_encoders"
    scratch = tmp_path_factory.mktemp("gguf_te")
    written: list[Path] = []
    values = np.zeros((32, 64), np.float32)
    for name, tensors in (
        (TE, {"token_embd.weight": ("Q8_0", values), "blk.0.attn_q.weight": ("Q8_0", values)}),
        (LONELY, {"token_embd.weight": ("Q8_0", values)}),
        (MMPROJ, {"v.blk.0.attn_q.weight": ("F16", values), "mm.0.weight": ("F16", values)}),
    ):
        arch = "clip" if "mmproj" in name else "qwen2vl"
        write_gguf(scratch / name, tensors, arch=arch)
        (folder / name).write_bytes((scratch / name).read_bytes())
        written.append(folder / name)
    yield
    for path in written:
        path.unlink(missing_ok=True)


def test_the_loader_lists_gguf_text_encoders_not_their_projectors(comfy, gguf_text_encoders):
    info = comfy.object_info()["QwenFitOptimizedLoader"]["input"]
    spec = info["optional"]["text_encoder"]
    choices = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert TE in choices and LONELY in choices and MMPROJ not in choices


def test_a_gguf_text_encoder_is_refused_with_the_fix_and_the_next_prompt_runs(comfy, gguf_text_encoders):
    assert queue(comfy, loader_graph(EDIT)).status == "success"  # a pipeline is held before the bad prompt
    result = queue(comfy, loader_graph(EDIT, text_encoder=TE))
    assert_refused(result, (TE, MMPROJ, "not GGUF text encoders yet", FIX))
    assert_next_prompt_runs(comfy)


def test_a_gguf_text_encoder_without_its_projector_names_the_missing_file(comfy, gguf_text_encoders):
    result = queue(comfy, loader_graph(EDIT, text_encoder=LONELY))
    assert_refused(result, ("vision projector is missing", "Qwen2.5-VL-3B-Instruct-mmproj-F16.gguf", FIX))
    assert_next_prompt_runs(comfy)
