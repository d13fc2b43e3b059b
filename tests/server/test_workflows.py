"""Every bundled preset's API twin matches its UI workflow and runs through the real server."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, load_json
from PIL import Image

from tools.presets import PRESET_FILES, TINY_STEPS, on_tiny_models
from tools.workflow_format import ui_to_api, widget_names

UI_WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
API_DIR = REPO / "tests" / "workflows"


def _twin(ui_path: Path) -> Path:
    return API_DIR / f"{ui_path.stem}.api.json"


def test_every_preset_has_an_api_twin_and_back():
    assert UI_WORKFLOWS, "no bundled workflows"
    assert {p.stem for p in UI_WORKFLOWS} == {p.name.removesuffix(".api.json") for p in API_DIR.glob("*.api.json")}


@pytest.mark.parametrize("ui_path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_api_twin_equals_the_ui_workflow(comfy, ui_path):
    """What the frontend would queue from the UI file is exactly the twin the tests run."""
    assert ui_to_api(load_json(ui_path), comfy.object_info()) == load_json(_twin(ui_path))


@pytest.mark.parametrize("ui_path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_twin_runs_to_success_on_tiny_models(comfy, ui_path):
    api = on_tiny_models(load_json(_twin(ui_path)))
    result = comfy.run(api)
    assert result.status == "success", result.error_text()
    run_node = next(i for i, n in api.items() if n["class_type"] in ("QwenFitInstructEdit", "QwenFitLayeredDecompose"))
    # One progress update per denoising step (the same hook carries ComfyUI's Cancel).
    assert [e["value"] for e in result.progress_events(run_node)] == list(range(1, TINY_STEPS + 1))
    saved = [f for f in result.files if f.exists()]
    if api[run_node]["class_type"] == "QwenFitInstructEdit":
        assert len(saved) == 1
    else:
        assert len(saved) == api[run_node]["inputs"]["layers"]
    sizes = {Image.open(f).size for f in saved}
    assert len(sizes) == 1
    offload = next(n for n in api.values() if n["class_type"] == "QwenFitOffloadToggle")
    if offload["inputs"].get("gpus") == "all":  # a multi-GPU preset on this GPU-less machine says so
        report = "\n".join(t for out in result.outputs.values() for t in out.get("text", []))
        assert "multi-GPU preset: no GPU is visible, so everything runs on the CPU" in report


# The folders the frontend's missing-models dialog accepts a download into, and the hosts it downloads from.
MODEL_FOLDERS = {"diffusion_models", "text_encoders", "vae", "loras"}


@pytest.mark.parametrize("ui_path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_preset_names_where_its_files_come_from(comfy, ui_path):
    """A new user without the files gets the frontend's offer to download them (the pack never downloads):
    the loader names every file it needs on its widgets (frontend 1.58 offers only files a widget names, so
    not `auto`) and carries each one's metadata, as the workflow does, each from Comfy-Org's repository into
    its ComfyUI folder."""
    workflow = load_json(ui_path)
    loader = next(n for n in workflow["nodes"] if n["type"] == "QwenFitOptimizedLoader")
    names = [n for n, _ in widget_names(comfy.object_info()["QwenFitOptimizedLoader"])]
    widgets = dict(zip(names, loader["widgets_values"], strict=False))
    kind = "layered" if "layered" in ui_path.stem else "edit"
    named = [widgets["model"], widgets["text_encoder"], widgets["vae"]]
    assert named == list(PRESET_FILES[kind])
    assert widgets["lora"] == "none"  # a preset with a LoRA lists it in its models too
    assert loader["properties"]["models"] == workflow["models"]
    assert [m["name"] for m in workflow["models"]] == named
    for entry in workflow["models"]:
        assert entry["directory"] in MODEL_FOLDERS, entry
        assert entry["url"].startswith("https://huggingface.co/Comfy-Org/"), entry
        assert entry["url"].endswith(f"/split_files/{entry['directory']}/{entry['name']}"), entry
        assert entry["name"].endswith(".safetensors"), entry
