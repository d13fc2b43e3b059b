"""One settings schema through the real server: the nodes' inputs, the preview route and the browser's
schema route all come from it; the multi-GPU presets' preview is the multi-GPU plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from comfy_host import read_env
from conftest import REPO, load_json

from optim import SETTINGS_SCHEMA
from tools.presets import on_tiny_models

GIB = 1024**3
MULTI_GPU_PRESETS = ("qwenfit_edit_multigpu", "qwenfit_layered_multigpu")


def test_the_settings_nodes_offer_exactly_the_schema(comfy):
    info = comfy.object_info()
    for group in SETTINGS_SCHEMA:
        node = info[group.node_id]["input"]
        offered = {**node.get("required", {}), **node.get("optional", {})}
        assert list(offered) == [c.field for c in group.choices]
        for choice in group.choices:
            kind, extra = offered[choice.field][0], offered[choice.field][1]
            options = extra["options"] if kind == "COMBO" else kind  # V3 combos: ["COMBO", {"options": ...}]
            assert list(options) == list(choice.options) and extra["default"] == choice.default
            assert (choice.field in node.get("optional", {})) == choice.optional


def test_the_schema_route_serves_the_schema(comfy):
    groups = comfy.get("/qwenfit/settings_schema").json()["groups"]
    assert [g["loader_input"] for g in groups] == [g.loader_input for g in SETTINGS_SCHEMA]
    assert comfy.get("/qwenfit/settings_schema", extra="1").status_code == 400


def preview_query(api: dict) -> dict[str, str]:
    """The query the browser builds for a preset's loader: its widgets, and every settings node's
    choices under the names the schema route gives (as web/qwenfit/plan_preview.js does)."""
    loader_id, loader = next((i, n) for i, n in api.items() if n["class_type"] == "QwenFitOptimizedLoader")
    params = {
        k: str(v) for k, v in loader["inputs"].items() if k in ("model", "variant", "text_encoder", "vae", "lora")
    }
    for group in SETTINGS_SCHEMA:
        link = loader["inputs"].get(group.loader_input)
        if link:
            settings = api[link[0]]["inputs"]
            params.update({c.query: str(settings[c.field]) for c in group.choices if c.field in settings})
    return params


@pytest.mark.parametrize("preset", MULTI_GPU_PRESETS)
def test_multi_gpu_presets_preview_the_multi_gpu_settings(comfy, preset):
    """Regression: the preview once dropped gpus and multi_gpu, so these presets previewed a one-GPU
    plan. On this GPU-less host the multi-GPU plan is the CPU fallback, and the preview says so."""
    api = on_tiny_models(load_json(REPO / "tests" / "workflows" / f"{preset}.api.json"))
    params = preview_query(api)
    assert params["gpus"] == "all"
    answer = comfy.get("/qwenfit/plan_preview", **params).json()
    assert answer["ok"], answer
    assert "multi-GPU preset: no GPU is visible, so everything runs on the CPU" in answer["notes"]


ROUTE_WITH_DESCRIBED_GPUS = r"""
import asyncio, importlib.util, json, sys
comfy_dir, pack_dir, models, params = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, comfy_dir)
from comfy.cli_args import args
args.cpu = True  # as the test server runs (no GPU on this host)
import folder_paths
for kind in ("diffusion_models", "text_encoders", "vae", "loras", "diffusers"):
    folder_paths.add_model_folder_path(kind, f"{models}/{kind}", is_default=True)
spec = importlib.util.spec_from_file_location("qwenfit_pack", f"{pack_dir}/__init__.py",
                                              submodule_search_locations=[pack_dir])
pack = importlib.util.module_from_spec(spec); sys.modules["qwenfit_pack"] = pack; spec.loader.exec_module(pack)
from types import SimpleNamespace
from qwenfit_pack.nodes import routes
routes.live_monitor = lambda: SimpleNamespace(run_active=False)  # no server here: no monitor, no run
from qwenfit_pack.optim import Gpu
import qwenfit_pack.optim.jobs.plan_preview as core_preview
from aiohttp.test_utils import make_mocked_request
from urllib.parse import urlencode
# Two 24 GiB GPUs described to the planner, as the multi-GPU planner tests do.
described = (Gpu("cuda:0", 24 * 2**30), Gpu("cuda:1", 24 * 2**30))
core_preview.resolve_gpus = lambda offload, device, **_: (described if offload.gpus == "all" else described[:1], ())
async def ask():
    request = make_mocked_request("GET", "/qwenfit/plan_preview?" + urlencode(params))
    response = await routes.plan_preview(request)
    return response.status, json.loads(response.body)
print(json.dumps(asyncio.run(ask())))
"""


@pytest.mark.parametrize("preset", MULTI_GPU_PRESETS)
def test_multi_gpu_presets_preview_through_the_route_with_gpus_described(preset):
    """The route's own handler in a process that has ComfyUI's modules, with two GPUs described to the
    planner: the preset's preview is the multi-GPU plan over both."""
    env_paths = read_env()
    api = on_tiny_models(load_json(REPO / "tests" / "workflows" / f"{preset}.api.json"))
    params = preview_query(api)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", ROUTE_WITH_DESCRIBED_GPUS, env_paths["QWENFIT_COMFYUI"], str(REPO),
         env_paths["QWENFIT_MODELS"], json.dumps(params)],
        capture_output=True, text=True, timeout=300, env=env, cwd=env_paths["QWENFIT_COMFYUI"],
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    status, answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == 200 and answer["ok"], (answer, out.stderr[-3000:])
    plan = answer["plan"]
    assert [g["device"] for g in plan["gpus"]] == ["cuda:0", "cuda:1"], plan
    assert plan["strategy"] in ("CFG-parallel", "block split")
    assert "cuda:1 holds" in plan["text"] and f"GPUs: {plan['strategy']} ({plan['reason']})" in plan["text"]
