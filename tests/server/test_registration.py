"""The pack registers with a real ComfyUI, on each server (0.3.75 and 0.8.0): eight nodes, web extension,
workflow templates and their thumbnails."""

from __future__ import annotations

from conftest import PACK_LINK_NAME, REPO

EXPECTED = {
    "QwenFitOptimizedLoader": ({"model", "variant"}, ["QWENFIT_PIPELINE", "STRING"]),
    "QwenFitPrecisionSelector": ({"transformer", "text_encoder", "vae"}, ["QWENFIT_PRECISION"]),
    "QwenFitOffloadToggle": ({"mode", "vram_budget"}, ["QWENFIT_OFFLOAD"]),
    "QwenFitVAESlicer": ({"tiling", "slicing"}, ["QWENFIT_VAE"]),
    "QwenFitInstructEdit": (
        {"pipeline", "image", "prompt", "negative_prompt", "true_cfg_scale", "steps", "seed", "width", "height"},
        ["IMAGE", "STRING"],
    ),
    "QwenFitLayeredDecompose": (
        {"pipeline", "image", "layers", "resolution", "prompt", "negative_prompt", "true_cfg_scale", "steps", "seed"},
        ["IMAGE", "MASK", "IMAGE", "STRING"],
    ),
    "QwenFitVRAMMonitor": (set(), ["*", "STRING", "IMAGE"]),
    "QwenFitLora": ({"pipeline", "lora", "strength"}, ["QWENFIT_PIPELINE"]),
}


def test_all_eight_nodes_listed_with_inputs_and_outputs(any_comfy):
    info = any_comfy.object_info()
    ours = {name for name in info if name.startswith("QwenFit")}
    assert ours == set(EXPECTED)
    for name, (required, outputs) in EXPECTED.items():
        node = info[name]
        assert set(node["input"].get("required", {})) == required, name
        if name == "QwenFitOffloadToggle":  # optional, so API prompts written before them still run
            assert set(node["input"].get("optional", {})) == {"host_budget", "cfg", "gpus", "multi_gpu"}
        assert node["output"] == outputs, name
        assert node["category"] == "QwenFit"
        assert node["display_name"].startswith("QwenFit ")
        assert node["description"], name


def test_widgets_carry_tooltips(any_comfy):
    info = any_comfy.object_info()
    loader = info["QwenFitOptimizedLoader"]["input"]
    assert "tooltip" in loader["required"]["model"][1]
    models = loader["required"]["model"][1]["options"]
    assert "qwenfit-tiny-edit-2509" in models and "qwenfit_tiny_edit_2511_fp8mixed.safetensors" in models
    assert loader["optional"]["text_encoder"][1]["options"][0] == "auto"
    edit = info["QwenFitInstructEdit"]["input"]["required"]
    assert edit["negative_prompt"][1]["default"] == " "
    assert edit["seed"][1]["control_after_generate"] is True


def test_server_log_shows_no_import_failure(any_comfy):
    assert any_comfy.pack_import_failures() == []
    assert f"custom_nodes/{PACK_LINK_NAME}" in any_comfy.log()


def test_web_extension_is_served(any_comfy):
    listed = any_comfy.get("/extensions").json()
    ours = sorted(path for path in listed if path.startswith(f"/extensions/{PACK_LINK_NAME}/"))
    entry = f"/extensions/{PACK_LINK_NAME}/qwenfit.js"
    assert entry in ours and all(p == entry or p.startswith(f"/extensions/{PACK_LINK_NAME}/qwenfit/") for p in ours)
    script = any_comfy.get(entry)
    assert script.ok and "registerExtension" in script.text
    for module in ours:  # the entry imports the others: each must be served
        assert any_comfy.get(module).ok, module


def test_presets_appear_in_template_browser(any_comfy):
    templates = any_comfy.get("/workflow_templates").json()
    presets = {p.stem for p in (REPO / "example_workflows").glob("*.json")}
    # Edit and Layered for 8 GB, 24 GB, multi-GPU rigs and the auto plan.
    assert {f"qwenfit_{kind}_{rig}" for kind in ("edit", "layered") for rig in ("8gb", "24gb", "multigpu")} <= presets
    assert presets <= set(templates[PACK_LINK_NAME])
    for name in presets:
        served = any_comfy.get(f"/api/workflow_templates/{PACK_LINK_NAME}/{name}.json")
        assert served.ok and served.json()["nodes"]


def test_preset_thumbnails_are_served_by_the_pack_too(any_comfy):
    """The template browser's thumbnails: 0.3.75 serves them from its static mount of example_workflows
    (the /api path); newer servers serve only .json there, so the pack answers the .jpg itself. Without the
    /api prefix the pinned server has no static mount: that answer can only come from the pack's route."""
    for jpg in sorted((REPO / "example_workflows").glob("*.jpg")):
        for prefix in ("", "/api"):
            served = any_comfy.get(f"{prefix}/workflow_templates/{PACK_LINK_NAME}/{jpg.name}")
            assert served.status_code == 200, (prefix, jpg.name, served.status_code)
            assert served.content == jpg.read_bytes() and served.headers["Content-Type"] == "image/jpeg"
    for name in ("not_a_preset.jpg", "..%2Fpyproject.jpg", "qwenfit_edit_8gb.json.jpg"):
        assert any_comfy.get(f"/workflow_templates/{PACK_LINK_NAME}/{name}").status_code == 404, name
