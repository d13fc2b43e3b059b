"""What ``auto`` multiplies in, for every file layout users have, per GPU generation, with Triton and without
(optim/planning/arithmetic_choice.py on the tiny files' real headers): 8-bit products exactly where ComfyUI
0.8.0's own nodes use them by default and they are faster than exact here; exact everywhere else."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from tiny_files import MODELS, split_files

from optim.files.fp8_layouts import is_scale_key
from optim.planning.arithmetic_choice import arithmetic_for
from optim.planning.load_request import LoadRequest, describe
from optim.planning.planner import Gpu
from optim.quant import fused_quantize

CPU, AMPERE, ADA, HOPPER = None, (8, 6), (8, 9), (9, 0)
FILES = {
    "bf16": ("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509"),
    "fp8 scaled": ("qwenfit_tiny_edit_2509_fp8_e4m3fn.safetensors", "edit-2509"),
    "fp8 mixed": ("qwenfit_tiny_edit_2511_fp8mixed.safetensors", "edit-2511"),
    "fp8 plain": (None, "edit-2509"),  # written below: the scaled file's fp8 weights, no scales, no marker
    "int8 convrot": ("qwenfit_tiny_edit_2509_int8_convrot.safetensors", "edit-2509"),
    "int8 tensorwise": ("qwenfit_tiny_edit_2509_int8.safetensors", "edit-2509"),
    "mxfp8": ("qwenfit_tiny_edit_2509_mxfp8.safetensors", "edit-2509"),
    "gguf Q4_K_M": ("qwenfit_tiny_edit_2511_Q4_K_M.gguf", "edit-2511"),
    "gguf Q8_0": ("qwenfit_tiny_layered_Q8_0.gguf", "layered"),
}
# (file, GPU) -> what auto multiplies in with Triton installed; without it every row is exact.
EXPECTED = {
    ("fp8 scaled", ADA): "fp8",
    ("fp8 scaled", HOPPER): "fp8",
    ("fp8 mixed", ADA): "fp8",
    ("fp8 mixed", HOPPER): "fp8",
    ("int8 convrot", AMPERE): "int8",
    ("int8 convrot", ADA): "int8",
    ("int8 tensorwise", AMPERE): "int8",
    ("int8 tensorwise", ADA): "int8",
}


@pytest.fixture(scope="module")
def plain_fp8(tmp_path_factory) -> Path:
    """A plain e4m3fn cast as some releases ship it: fp8 weights with no scales and no ``scaled_fp8`` marker."""
    folder = tmp_path_factory.mktemp("plain") / "diffusion_models"
    folder.mkdir()
    scaled = load_file(MODELS / "diffusion_models" / FILES["fp8 scaled"][0])
    save_file(
        {k: v for k, v in scaled.items() if not is_scale_key(k)}, folder / "qwenfit_tiny_plain_e4m3fn.safetensors"
    )
    return folder / "qwenfit_tiny_plain_e4m3fn.safetensors"


def _request(layout: str, plain_fp8: Path) -> LoadRequest:
    name, variant = FILES[layout]
    source = split_files(name or "unused", variant)
    if name is None:
        source = type(source)(plain_fp8, source.text_encoder, source.vae, source.tokenizer)
    return LoadRequest(source)


@pytest.mark.parametrize("triton", [True, False], ids=["triton", "no-triton"])
@pytest.mark.parametrize("gpu", [CPU, AMPERE, ADA, HOPPER], ids=["cpu", "sm86", "sm89", "sm90"])
@pytest.mark.parametrize("layout", list(FILES))
def test_auto_per_file_layout_gpu_and_triton(layout, gpu, triton, plain_fp8, monkeypatch):
    monkeypatch.setattr(fused_quantize, "available", lambda: triton)
    request = _request(layout, plain_fp8)
    device = Gpu("cpu", None) if gpu is None else Gpu("cuda:0", None, gpu)
    chosen = arithmetic_for(request, describe(request), (device,))
    expected = EXPECTED.get((layout, gpu), "expanded") if triton else "expanded"
    assert chosen.kind == expected, chosen.reason
    assert chosen.rung == ("exact" if expected == "expanded" else "fast")
    assert not chosen.compiled and not chosen.step_cache
    assert chosen.store_as is None  # auto never re-quantizes: every rung switches in place
