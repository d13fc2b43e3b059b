"""FireRed-Image-Edit: told apart by its name only (its weights are Edit-2509's keys and shapes), run as Edit-2509,
named FireRed-Image-Edit in the reports; choices that would run it as 2511 or Layered are refused."""

from __future__ import annotations

import json
import shutil

import pytest
from tiny_files import FOLDER, MODELS, TOKENIZER, split_files

from optim import DiffusersFolder, LoadRequest, QwenFitError, SplitFiles, Variant
from optim.planning.load_request import describe
from optim.qwen.variants import FIRERED, VARIANT_CHOICES, ModelIdentity, is_firered_name, resolve_model

COMFY_ORG_NAME = "firered_image_edit_1.0_bf16.safetensors"  # Comfy-Org/Qwen-Image-Edit_ComfyUI, split_files


@pytest.mark.parametrize(
    "name, firered",
    [
        (COMFY_ORG_NAME, True),
        ("firered_image_edit_1.1_fp8_scaled_e4m3fn.safetensors", True),
        ("FireRed-Image-Edit-1.1", True),  # FireRedTeam's diffusers repository name
        ("Fire_Red_Image_Edit-Q4_K_M.gguf", True),
        ("qwen_image_edit_2509_fp8_e4m3fn.safetensors", False),
        ("qwen_image_edit_2511_bf16.safetensors", False),
        ("fire_image_edit.safetensors", False),
    ],
)
def test_firered_names(name, firered):
    assert is_firered_name(name) is firered


def test_resolve_model_choices():
    auto = resolve_model(None, Variant.EDIT_2509, True, "auto", "f")
    assert auto == ModelIdentity(Variant.EDIT_2509, firered=True)
    assert "FireRed-Image-Edit" in auto.describe() and "Qwen-Image-Edit-2509" in auto.describe()
    assert resolve_model(None, Variant.EDIT_2509, False, FIRERED, "f") == auto  # asked for by the setting
    assert resolve_model(None, Variant.EDIT_2509, True, "edit-2509", "f") == auto
    assert resolve_model(None, Variant.EDIT_2509, False, "auto", "f") == ModelIdentity(Variant.EDIT_2509)
    assert ModelIdentity(Variant.EDIT_2509).describe() == "Qwen-Image-Edit-2509"
    # weights that prove 2511 win over a FireRed name (the released FireRed has no 2511 marker)
    assert resolve_model(Variant.EDIT_2511, Variant.EDIT_2509, True, "auto", "f") == ModelIdentity(Variant.EDIT_2511)
    assert FIRERED in VARIANT_CHOICES


@pytest.mark.parametrize(
    "proven, guessed, named, requested, message",
    [
        (Variant.EDIT_2511, Variant.EDIT_2511, False, FIRERED, r"edit-2511 by its weights.*variant=firered-edit"),
        (Variant.LAYERED, Variant.LAYERED, False, FIRERED, r"layered by its weights"),
        (None, Variant.LAYERED, False, FIRERED, r"Layered model; variant=firered-edit"),
        (None, Variant.EDIT_2509, True, "edit-2511", r"FireRed-Image-Edit by its name.*no zero_cond_t"),
    ],
)
def test_choices_that_would_run_firered_as_something_else_are_refused(proven, guessed, named, requested, message):
    with pytest.raises(QwenFitError, match=message):
        resolve_model(proven, guessed, named, requested, "f")


def _firered_copy(tmp_path, name=COMFY_ORG_NAME, source="qwenfit_tiny_edit_2509_bf16.safetensors") -> SplitFiles:
    path = tmp_path / name
    shutil.copyfile(MODELS / "diffusion_models" / source, path)
    files = split_files("x", "edit-2509")
    return SplitFiles(path, files.text_encoder, files.vae, TOKENIZER)


def test_the_comfy_org_file_is_firered_run_as_2509(tmp_path):
    desc = describe(LoadRequest(source=_firered_copy(tmp_path)))
    assert desc.variant is Variant.EDIT_2509
    assert desc.identity.firered and desc.identity.describe().startswith("FireRed-Image-Edit")


def test_the_same_weights_under_a_qwen_name_are_not_firered(tmp_path):
    desc = describe(LoadRequest(source=_firered_copy(tmp_path, "my_edit.safetensors")))
    assert desc.identity == ModelIdentity(Variant.EDIT_2509)
    forced = describe(LoadRequest(source=_firered_copy(tmp_path, "my_edit.safetensors"), variant=FIRERED))
    assert forced.identity.firered and forced.variant is Variant.EDIT_2509


def test_a_firered_file_forced_to_2511_is_refused(tmp_path):
    with pytest.raises(QwenFitError, match=r"FireRed-Image-Edit by its name"):
        describe(LoadRequest(source=_firered_copy(tmp_path), variant="edit-2511"))


def test_a_2511_file_cannot_be_called_firered():
    source = split_files("qwenfit_tiny_edit_2511_bf16.safetensors", "edit-2511")
    with pytest.raises(QwenFitError, match=r"edit-2511 by its weights"):
        describe(LoadRequest(source=source, variant=FIRERED))


def test_a_firered_diffusers_folder(tmp_path):
    folder = tmp_path / "FireRed-Image-Edit-1.1"
    shutil.copytree(MODELS / "diffusers" / FOLDER["edit-2509"], folder)
    desc = describe(LoadRequest(source=DiffusersFolder(folder)))
    assert desc.variant is Variant.EDIT_2509 and desc.identity.firered
    # a folder named otherwise is FireRed when its transformer config says where it came from
    renamed = tmp_path / "edit-model"
    folder.rename(renamed)
    assert not describe(LoadRequest(source=DiffusersFolder(renamed))).identity.firered
    config_path = renamed / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "_name_or_path": "FireRedTeam/FireRed-Image-Edit-1.0"}))
    assert describe(LoadRequest(source=DiffusersFolder(renamed))).identity.firered
    with pytest.raises(QwenFitError, match=r"edit-2509 by its weights"):
        describe(LoadRequest(source=DiffusersFolder(renamed), variant="edit-2511"))
