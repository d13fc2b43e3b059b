"""Bad input gets a ComfyUI error that names the problem, and the next prompt runs normally."""

from __future__ import annotations

import pytest
from conftest import BROKEN_MODEL, SAMPLE

EDIT_MODEL = "qwenfit-tiny-edit-2509"


def edit_prompt(model: str = EDIT_MODEL, image_link: list | None = None, **edit_inputs) -> dict:
    """A small Edit graph: loader -> InstructEdit (128x128, 2 steps) -> SaveImage."""
    inputs = {
        "prompt": "make it blue",
        "negative_prompt": " ",
        "true_cfg_scale": 4.0,
        "steps": 2,
        "seed": 1,
        "width": 128,
        "height": 128,
        "pipeline": ["1", 0],
        "image": image_link or ["2", 0],
    }
    inputs.update(edit_inputs)
    return {
        "1": {"class_type": "QwenFitOptimizedLoader", "inputs": {"model": model, "variant": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": SAMPLE.name}},
        "3": {"class_type": "QwenFitInstructEdit", "inputs": inputs},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bad-input/ok"}},
    }


def assert_next_prompt_succeeds(comfy) -> None:
    result = comfy.run(edit_prompt())
    assert result.status == "success", result.error_text()
    assert len(result.files) == 1


def test_unknown_model_folder_is_refused_before_running(comfy):
    result = comfy.run(edit_prompt(model="no-such-model"))
    assert result.status == "invalid"
    assert "no-such-model" in result.error_text() and "models/diffusers" in result.error_text()
    assert_next_prompt_succeeds(comfy)


def test_incomplete_model_folder_names_the_missing_part(comfy):
    result = comfy.run(edit_prompt(model=BROKEN_MODEL))
    assert result.status == "error"
    message = result.error["exception_message"]
    assert BROKEN_MODEL in message and "missing transformer" in message and "Re-copy" in message
    assert_next_prompt_succeeds(comfy)


@pytest.mark.parametrize("link", [["2", 1], ["1", 1]], ids=["mask-into-image", "text-into-image"])
def test_non_image_input_is_refused(comfy, link):
    result = comfy.run(edit_prompt(image_link=link))
    assert result.status == "invalid"
    assert "image" in result.error_text() and "mismatch" in result.error_text().lower()
    assert_next_prompt_succeeds(comfy)


def test_model_of_the_wrong_family_for_the_node(comfy):
    result = comfy.run(edit_prompt(model="qwenfit-tiny-layered"))
    assert result.status == "error"
    assert "needs Qwen-Image-Edit" in result.error["exception_message"]
    assert_next_prompt_succeeds(comfy)


def test_variant_override_the_weights_contradict(comfy):
    prompt = edit_prompt(model="qwenfit-tiny-edit-2511")
    prompt["1"]["inputs"]["variant"] = "edit-2509"
    result = comfy.run(prompt)
    assert result.status == "error"
    assert "edit-2511 by its weights" in result.error["exception_message"]
    assert_next_prompt_succeeds(comfy)


@pytest.mark.parametrize("size, words", [((100, 128), "multiple of 16"), ((128, 0), "both width and height")])
def test_unusable_output_size(comfy, size, words):
    result = comfy.run(edit_prompt(width=size[0], height=size[1]))
    # ComfyUI's own widget validation may catch it first; either way the message names the fix.
    assert result.status in ("error", "invalid")
    text = result.error.get("exception_message") or result.error_text()
    assert words in text or "step" in text
    assert_next_prompt_succeeds(comfy)
