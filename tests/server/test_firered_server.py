"""FireRed-Image-Edit through the real server: Comfy-Org's file name in diffusion_models and FireRedTeam's folder
name in diffusers are listed, load, run as Edit-2509 (the same pixels as the same weights under a Qwen name) and
are named FireRed-Image-Edit in the plan and the run report; a choice that would run FireRed as 2511 is refused
with the fix, and the next prompt runs. The tiny files are the tiny Edit-2509 ones under FireRed's names (its
weights have 2509's keys and shapes)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_bad_input_corpus import EDIT, assert_next_prompt_runs, assert_refused, edit_graph, loader_graph, queue
from tiny_files import FOLDER, MODELS

FILE = "firered_image_edit_1.0_bf16.safetensors"  # Comfy-Org/Qwen-Image-Edit_ComfyUI's name
FOLDER_NAME = "FireRed-Image-Edit-1.1"  # FireRedTeam's diffusers repository name
NAMED = "Model: FireRed-Image-Edit (runs as Qwen-Image-Edit-2509"


@pytest.fixture(scope="module")
def firered(comfy):
    """FireRed's names in the host's model folders; removed when the module is done."""
    file = comfy.base / "models" / "diffusion_models" / FILE
    folder = comfy.base / "models" / "diffusers" / FOLDER_NAME
    shutil.copyfile(MODELS / "diffusion_models" / EDIT, file)
    shutil.copytree(MODELS / "diffusers" / FOLDER["edit-2509"], folder, dirs_exist_ok=True)
    yield
    file.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _text(result) -> str:
    return "\n".join(t for out in result.outputs.values() for t in out.get("text", []))


def _pixels(result) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(f), dtype=np.int16) for f in result.files])


def test_the_loader_lists_firered(comfy, firered):
    info = comfy.object_info()["QwenFitOptimizedLoader"]["input"]["required"]
    choices = info["model"][0] if isinstance(info["model"][0], list) else info["model"][1]["options"]
    assert FILE in choices and FOLDER_NAME in choices
    variants = info["variant"][0] if isinstance(info["variant"][0], list) else info["variant"][1]["options"]
    assert "firered-edit" in variants


@pytest.mark.parametrize("model", [FILE, FOLDER_NAME])
def test_firered_loads_runs_as_2509_and_is_named(comfy, firered, model):
    plan = queue(comfy, loader_graph(model))
    assert plan.status == "success", plan.error_text()
    assert NAMED in _text(plan), _text(plan)
    edit = {"seed": 7}
    got = comfy.run(edit_graph(model, **edit))
    assert got.status == "success", got.error_text()
    assert "FireRed-Image-Edit (runs as Qwen-Image-Edit-2509" in _text(got), _text(got)  # the run report
    same_weights = comfy.run(edit_graph(EDIT if model == FILE else FOLDER["edit-2509"], **edit))
    assert same_weights.status == "success", same_weights.error_text()
    np.testing.assert_array_equal(_pixels(got), _pixels(same_weights))


def test_the_variant_setting_names_firered(comfy):
    result = queue(comfy, loader_graph(EDIT, variant="firered-edit"))
    assert result.status == "success", result.error_text()
    assert NAMED in _text(result)


def test_firered_forced_to_2511_is_refused_and_the_next_prompt_runs(comfy, firered):
    assert_refused(
        queue(comfy, loader_graph(FILE, variant="edit-2511")), ("FireRed-Image-Edit", "auto or firered-edit")
    )
    assert_refused(
        queue(comfy, loader_graph("qwenfit_tiny_edit_2511_bf16.safetensors", variant="firered-edit")),
        ("edit-2511 by its weights", "variant=firered-edit"),
    )
    assert_next_prompt_runs(comfy)
