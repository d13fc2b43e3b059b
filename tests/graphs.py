"""API graphs of the pack's nodes on the tiny models, for the server tests."""

from __future__ import annotations

from conftest import SAMPLE

EDIT = "qwenfit_tiny_edit_2511_bf16.safetensors"
LAYERED = "qwenfit_tiny_layered_bf16.safetensors"


def loader(model: str) -> dict:
    return {"class_type": "QwenFitOptimizedLoader", "inputs": {"model": model, "variant": "auto"}}


def edit_graph(
    extra_refs: int = 0,
    batch_first: bool = False,
    steps: int = 2,
    seed: int = 5,
    width: int = 128,
    height: int = 128,
    image: str | None = None,
) -> dict:
    nodes = {"1": loader(EDIT), "2": {"class_type": "LoadImage", "inputs": {"image": image or SAMPLE.name}}}
    edit = {
        "pipeline": ["1", 0],
        "image": ["2", 0],
        "prompt": "make it winter",
        "negative_prompt": " ",
        "true_cfg_scale": 4.0,
        "steps": steps,
        "seed": seed,
        "width": width,
        "height": height,
    }
    if batch_first:  # a batch of two counts as two references
        nodes["5"] = {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["2", 0]}}
        edit["image"] = ["5", 0]
    for i in range(extra_refs):
        edit[f"image{i + 2}"] = ["2", 0]
    nodes["3"] = {"class_type": "QwenFitInstructEdit", "inputs": edit}
    nodes["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "edit"}}
    return nodes


def layered_graph(
    layers: int,
    resolution: str,
    prompt: str,
    steps: int = 2,
    save_psd: bool = False,
    prefix: str = "QwenFit/test",
    image: str | None = None,
) -> dict:
    return {
        "1": loader(LAYERED),
        "2": {"class_type": "LoadImage", "inputs": {"image": image or SAMPLE.name}},
        "3": {
            "class_type": "QwenFitLayeredDecompose",
            "inputs": {
                "pipeline": ["1", 0],
                "image": ["2", 0],
                "mask": ["2", 1],
                "layers": layers,
                "resolution": resolution,
                "prompt": prompt,
                "negative_prompt": " ",
                "true_cfg_scale": 4.0,
                "steps": steps,
                "seed": 9,
                "save_psd": save_psd,
                "filename_prefix": prefix,
            },
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "layers"}},
    }
