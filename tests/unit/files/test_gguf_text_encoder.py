"""ComfyUI-GGUF's text encoders: listed (their mmproj files not), never picked by auto, refused when chosen with the
file to use instead; one whose vision projector is missing is told so, naming the file it looks for."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny_files import MODELS, TE_BF16, TOKENIZER

from optim import QwenFitError, source_from_names, text_encoder_names
from optim.files.gguf_text_encoder import find_mmproj, model_stem
from optim.planning.load_request import LoadRequest, describe

TE = "Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf"
MMPROJ = "Qwen2.5-VL-7B-Instruct-mmproj-F16.gguf"
EDIT = "qwenfit_tiny_edit_2509_bf16.safetensors"


@pytest.fixture
def roots(tmp_path):
    """Model folders with the tiny Edit files and a GGUF text encoder (its bytes are never read)."""
    for kind, name in (
        ("diffusion_models", EDIT),
        ("text_encoders", TE_BF16),
        ("vae", "qwenfit_tiny_qwen_image_vae.safetensors"),
    ):
        (tmp_path / kind).mkdir()
        shutil.copyfile(MODELS / kind / name, tmp_path / kind / name)
    (tmp_path / "text_encoders" / TE).write_bytes(b"GGUF")
    return lambda kind: [str(tmp_path / kind)]


def _describe(roots, text_encoder: str):
    return describe(LoadRequest(source=source_from_names(roots, EDIT, text_encoder, "auto", TOKENIZER)))


@pytest.mark.parametrize(
    "name, stem",
    [
        (TE, "Qwen2.5-VL-7B-Instruct"),
        ("Qwen2.5-VL-7B-Instruct-UD-Q4_K_XL.gguf", "Qwen2.5-VL-7B-Instruct"),
        ("qwen2.5-vl-7b-instruct-iq4_xs.gguf", "qwen2.5-vl-7b-instruct"),
        ("Qwen2.5-VL-7B-Instruct.Q8_0.gguf", "Qwen2.5-VL-7B-Instruct"),
        ("Qwen2.5-VL-7B-Instruct-BF16.gguf", "Qwen2.5-VL-7B-Instruct"),
    ],
)
def test_the_model_name_without_its_quantization(name, stem):
    assert model_stem(Path(name)) == stem


def test_gguf_text_encoders_are_listed_but_not_their_projectors(roots, tmp_path):
    (tmp_path / "text_encoders" / MMPROJ).write_bytes(b"GGUF")
    names = text_encoder_names(roots)
    assert TE in names and MMPROJ not in names
    assert names[0] == TE_BF16 or "qwen" in names[0].lower()
    assert _describe(roots, "auto").text_encoder.files[0].path.name == TE_BF16  # auto never picks a GGUF


def test_without_its_projector_the_missing_file_is_named(roots, tmp_path):
    (tmp_path / "text_encoders" / "mmproj-of-another-model-F16.gguf").write_bytes(b"GGUF")  # not its projector
    assert find_mmproj(tmp_path / "text_encoders" / TE) is None
    with pytest.raises(QwenFitError, match=rf"vision projector is missing.*{MMPROJ}.*qwen_2.5_vl_7b_fp8_scaled"):
        _describe(roots, TE)


def test_with_its_projector_the_fp8_text_encoder_is_named(roots, tmp_path):
    (tmp_path / "text_encoders" / MMPROJ).write_bytes(b"GGUF")
    assert find_mmproj(tmp_path / "text_encoders" / TE).name == MMPROJ
    with pytest.raises(QwenFitError, match=r"with its vision projector .*not GGUF text encoders yet.*fp8_scaled"):
        _describe(roots, TE)
