"""Every layout users have runs through the real ComfyUI server and gives the diffusers-folder result:
bit-identical for bf16 files, within a stated tolerance for fp8 ones. Plus caching and bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import SAMPLE
from PIL import Image
from tiny_files import FOLDER, LAYOUTS, MODELS, TE_FP8, VAE

# fp8 weights (3 mantissa bits) against bf16: the largest pixel difference allowed, on 0..255.
FP8_MAX_PIXEL_DIFF = 24
FP8_MEAN_PIXEL_DIFF = 3.0


def graph(
    model: str,
    variant: str,
    text_encoder: str = "auto",
    vae: str = "auto",
    precision: dict | None = None,
    vae_settings: dict | None = None,
    prefix: str = "layout",
) -> dict:
    """Loader (+ precision) -> InstructEdit 128x128 or LayeredDecompose 2 layers -> SaveImage, 2 steps."""
    loader = {"model": model, "variant": "auto", "text_encoder": text_encoder, "vae": vae, "precision": ["10", 0]}
    nodes = {
        "10": {
            "class_type": "QwenFitPrecisionSelector",
            "inputs": precision or {"transformer": "auto", "text_encoder": "auto", "vae": "auto"},
        },
        "1": {"class_type": "QwenFitOptimizedLoader", "inputs": loader},
        "2": {"class_type": "LoadImage", "inputs": {"image": SAMPLE.name}},
    }
    if vae_settings:
        nodes["11"] = {"class_type": "QwenFitVAESlicer", "inputs": vae_settings}
        loader["vae_settings"] = ["11", 0]
    if variant == "layered":
        nodes["3"] = {
            "class_type": "QwenFitLayeredDecompose",
            "inputs": {
                "pipeline": ["1", 0],
                "image": ["2", 0],
                "layers": 2,
                "resolution": "640",
                "prompt": "a house",
                "negative_prompt": " ",
                "true_cfg_scale": 4.0,
                "steps": 2,
                "seed": 3,
            },
        }
    else:
        nodes["3"] = {
            "class_type": "QwenFitInstructEdit",
            "inputs": {
                "pipeline": ["1", 0],
                "image": ["2", 0],
                "prompt": "add snow",
                "negative_prompt": " ",
                "true_cfg_scale": 4.0,
                "steps": 2,
                "seed": 3,
                "width": 128,
                "height": 128,
            },
        }
    nodes["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}}
    return nodes


def pixels(comfy, prompt: dict) -> np.ndarray:
    result = comfy.run(prompt)
    assert result.status == "success", result.error_text()
    return np.stack([np.asarray(Image.open(f), dtype=np.int16) for f in result.files])


@pytest.fixture(scope="module")
def folder_outputs(comfy):
    """The diffusers-folder results per variant, computed in the CPU's fp32: the bf16 files hold exactly the
    folder's (bf16) weights, so they must match these exactly; fp8 files within the fp8 tolerance."""
    return {
        variant: pixels(comfy, graph(folder, variant, prefix=f"ref-{variant}")) for variant, folder in FOLDER.items()
    }


@pytest.mark.parametrize("transformer, variant, text_encoder, fp8", LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def test_layout_matches_the_diffusers_folder(comfy, folder_outputs, transformer, variant, text_encoder, fp8):
    got = pixels(comfy, graph(transformer, variant, text_encoder, VAE[variant], prefix=transformer))
    want = folder_outputs[variant]
    if fp8:
        diff = np.abs(got - want)
        assert diff.max() <= FP8_MAX_PIXEL_DIFF and diff.mean() <= FP8_MEAN_PIXEL_DIFF, (diff.max(), diff.mean())
    else:
        np.testing.assert_array_equal(got, want)


def test_fp8_scaled_text_encoder_through_the_server(comfy, folder_outputs):
    got = pixels(comfy, graph("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509", TE_FP8, prefix="te-fp8"))
    diff = np.abs(got - folder_outputs["edit-2509"])
    assert diff.max() <= FP8_MAX_PIXEL_DIFF and diff.mean() <= FP8_MEAN_PIXEL_DIFF, (diff.max(), diff.mean())


def test_auto_picks_the_text_encoder_and_the_variants_vae(comfy):
    result = comfy.run(graph("qwenfit_tiny_layered_bf16.safetensors", "layered", prefix="auto-files"))
    assert result.status == "success", result.error_text()
    assert len(result.files) == 2


def test_same_selection_is_not_reloaded(comfy):
    """A changed VAE setting re-runs the loader node but must not reload the weights."""
    model = "qwenfit_tiny_edit_2511_bf16.safetensors"
    marker = f"QwenFit: loading {model}"
    first = comfy.run(graph(model, "edit-2511", vae_settings={"tiling": "off", "slicing": "off"}, prefix="cache"))
    assert first.status == "success", first.error_text()
    loads = comfy.log().count(marker)
    second = comfy.run(graph(model, "edit-2511", vae_settings={"tiling": "on", "slicing": "on"}, prefix="cache"))
    assert second.status == "success", second.error_text()
    assert comfy.log().count(marker) == loads >= 1


def test_bad_files_get_clear_errors_and_the_server_keeps_serving(comfy):
    bad = comfy.base / "models" / "diffusion_models"
    truncated = bad / "qwen_truncated.safetensors"
    source = MODELS / "diffusion_models" / "qwenfit_tiny_edit_2509_bf16.safetensors"
    truncated.write_bytes(source.read_bytes()[:50_000])
    (bad / "old_model.ckpt").write_bytes(b"\x80\x04 not to be unpickled")
    shutil.copyfile(MODELS / "vae" / VAE["layered"], bad / "vae_in_wrong_folder.safetensors")
    cases = {
        "qwen_truncated.safetensors": "truncated",
        "old_model.ckpt": "never loads pickles",  # refused at validation, before anything is read
        "vae_in_wrong_folder.safetensors": "VAE (vae), not a Qwen-Image transformer",
    }
    for model, words in cases.items():
        result = comfy.run(graph(model, "edit-2509", prefix="bad"))
        assert result.status in ("error", "invalid"), model
        text = result.error.get("exception_message") or result.error_text()
        assert words in text, (model, text)
    mismatched = comfy.run(
        graph("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509", vae=VAE["layered"], prefix="bad")
    )
    assert mismatched.status == "error" and "pick qwen_image_vae" in mismatched.error["exception_message"]
    ok = comfy.run(graph("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509", prefix="after-bad"))
    assert ok.status == "success", ok.error_text()
