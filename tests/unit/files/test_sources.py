"""The files users have, read from headers alone: key names, variants, families, wrong slots, pickles, tokenizers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from comfy_host import read_env
from conftest import REPO
from safetensors.torch import save_file
from tiny_files import MODELS, TE_BF16, TOKENIZER, split_files

from optim import LoadRequest, QwenFitError, SplitFiles, Variant
from optim.planning.load_request import describe


def test_key_names_and_configs_match_comfyui_modules_at_real_size():
    """Our shipped 20B configs + key maps give exactly ComfyUI's own tensor names and shapes, and the
    tiny VAE files carry the names ComfyUI's VAE module has."""
    env = read_env()
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "comfy_reference_keys.py"),
            env["QWENFIT_COMFYUI"],
            str(REPO),
            env["QWENFIT_MODELS"],
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    differences = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(differences) >= {"real transformer", "real text encoder", "real vae"}
    assert {k: v for k, v in differences.items() if v} == {}


@pytest.mark.parametrize(
    "transformer, variant",
    [
        ("qwenfit_tiny_edit_2509_bf16.safetensors", Variant.EDIT_2509),
        ("qwenfit_tiny_edit_2509_fp8_e4m3fn.safetensors", Variant.EDIT_2509),
        ("qwenfit_tiny_edit_2511_bf16.safetensors", Variant.EDIT_2511),
        ("qwenfit_tiny_edit_2511_fp8mixed.safetensors", Variant.EDIT_2511),
        ("qwenfit_tiny_layered_bf16.safetensors", Variant.LAYERED),
        ("qwenfit_tiny_layered_fp8mixed.safetensors", Variant.LAYERED),
    ],
)
def test_variant_is_read_from_the_weights(transformer, variant):
    desc = describe(LoadRequest(source=split_files(transformer, variant.value)))
    assert desc.variant is variant


def test_2511_marker_wins_over_the_file_name(tmp_path):
    renamed = tmp_path / "my_edit_model.safetensors"  # no "2511" in the name: the marker key decides
    shutil.copyfile(MODELS / "diffusion_models" / "qwenfit_tiny_edit_2511_bf16.safetensors", renamed)
    files = split_files("x", "edit-2511")
    assert (
        describe(LoadRequest(source=SplitFiles(renamed, files.text_encoder, files.vae, TOKENIZER))).variant
        is Variant.EDIT_2511
    )


def test_a_2511_file_forced_to_2509_is_refused():
    with pytest.raises(QwenFitError, match=r"edit-2511 by its weights.*variant=edit-2509"):
        describe(
            LoadRequest(source=split_files("qwenfit_tiny_edit_2511_bf16.safetensors", "edit-2511"), variant="edit-2509")
        )


def test_mismatched_vae_names_both_files_and_the_fix():
    source = split_files(
        "qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509", vae="qwenfit_tiny_qwen_image_layered_vae.safetensors"
    )
    with pytest.raises(QwenFitError) as err:
        describe(LoadRequest(source=source))
    message = str(err.value)
    assert "qwenfit_tiny_qwen_image_layered_vae.safetensors" in message and "edit_2509" in message
    assert "pick qwen_image_vae.safetensors" in message
    layered = split_files(
        "qwenfit_tiny_layered_bf16.safetensors", "layered", vae="qwenfit_tiny_qwen_image_vae.safetensors"
    )
    with pytest.raises(QwenFitError, match="pick qwen_image_layered_vae"):
        describe(LoadRequest(source=layered))


def test_files_in_the_wrong_slot_say_what_they_are():
    te_as_transformer = split_files(f"../text_encoders/{TE_BF16}", "edit-2509")
    with pytest.raises(QwenFitError, match="is a Qwen2.5 text encoder .text_encoders., not a Qwen-Image transformer"):
        describe(LoadRequest(source=te_as_transformer))


@pytest.mark.parametrize(
    "keys, family",
    [
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": (4, 4),
                "model.diffusion_model.label_emb.0.0.weight": (4, 4),
                "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": (1, 4),
            },
            "SDXL",
        ),
        ({"double_blocks.0.img_attn.qkv.weight": (4, 4), "img_in.weight": (4, 4)}, "Flux"),
    ],
)
def test_other_model_families_are_named(tmp_path, keys, family):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    files = split_files("x", "edit-2509")
    with pytest.raises(QwenFitError, match=f"{family}.*not a Qwen-Image transformer"):
        describe(LoadRequest(source=SplitFiles(path, files.text_encoder, files.vae, TOKENIZER)))


def test_pickle_files_are_refused_unread(tmp_path):
    from optim.files.safetensors_file import SafetensorsFile
    from optim.files.weight_files import resolve_weight_file

    evil = tmp_path / "model.ckpt"
    evil.write_bytes(b"\x80\x04 pretend pickle that would run code")
    for name in ("model.ckpt", "model.pt", "model.bin"):
        with pytest.raises(QwenFitError, match="never loads pickles"):
            resolve_weight_file([tmp_path], name, "diffusion_models")
    with pytest.raises(QwenFitError, match="pickle"):
        SafetensorsFile(evil)
    disguised = tmp_path / "disguised.safetensors"  # pickle bytes behind a safetensors name
    disguised.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    with pytest.raises(QwenFitError, match="not a readable safetensors file"):
        SafetensorsFile(disguised)


def test_missing_tokenizer_says_where_to_get_it(tmp_path):
    files = split_files("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509")
    with pytest.raises(QwenFitError, match="tokenizer is missing.*qwen25_tokenizer"):
        describe(LoadRequest(source=SplitFiles(files.transformer, files.text_encoder, files.vae, tmp_path)))
