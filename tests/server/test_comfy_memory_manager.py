"""ComfyUI's memory manager can take back what QwenFit keeps on the GPU between runs: the held pipeline is
registered as a model ComfyUI manages, an unload from ComfyUI (here its /free route, what the frontend's
"Unload Models" button sends) releases it, and the next QwenFit run places the weights again from host
memory, without loading, to the same image. On each server: ComfyUI 0.3.75 and 0.8.0 (whose model_management
was reworked: async offload, pinned memory)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests
from graphs import edit_graph
from test_lora import _image, _loads, _report


def _holdings(comfy) -> dict:
    response = comfy.get("/qwenfit/memory")
    assert response.status_code == 200, response.text
    return response.json()["comfy_memory_manager"]


def _wait_for(comfy, check, seconds: float = 30.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        holdings = _holdings(comfy)
        if check(holdings) or time.monotonic() > deadline:
            return holdings
        time.sleep(0.2)


def _ask_comfyui_to_free(comfy, done, attempts: int = 6) -> dict:
    """POST /free as the frontend's button does, again if ComfyUI's worker has not acted on it in 5 s.

    ComfyUI's prompt worker (main.py, 0.3.75) reads the flags /free sets, then collects garbage after a
    prompt, then waits on its queue; a /free that lands between the read and the wait wakes nobody and
    waits for the next prompt (a lost wake-up in ComfyUI, not in the pack). A second request wakes it, as
    a user's second click does; ComfyUI then unloads its models once, so the count below still checks that
    one unload releases the pipeline once."""
    for _ in range(attempts):
        answer = requests.post(f"{comfy.url}/free", json={"unload_models": True, "free_memory": True}, timeout=30)
        assert answer.status_code == 200
        holdings = _wait_for(comfy, done, seconds=5.0)
        if done(holdings):
            return holdings
    return holdings


def test_comfyui_unloading_its_models_releases_the_pipeline_and_the_next_run_places_it_again(any_comfy):
    comfy = any_comfy
    first = comfy.run(edit_graph(seed=23))
    expected = _image(first)
    holdings = _holdings(comfy)
    assert holdings["registered"] and holdings["placed"], holdings
    released_before, loads_before = holdings["release_count"], _loads(comfy)

    # ComfyUI's own request: unload every model it manages, and forget its cached node outputs.
    holdings = _ask_comfyui_to_free(comfy, lambda h: h["release_count"] > released_before)
    assert holdings["release_count"] == released_before + 1, holdings
    assert not holdings["registered"] and not holdings["placed"] and holdings["gpu_bytes"] == 0, holdings
    assert holdings["releases"][-1]["node"] is None  # asked between prompts, not by a node

    again = comfy.run(edit_graph(seed=23))
    assert np.array_equal(_image(again), expected)  # placed again from host memory: the same weights
    assert _loads(comfy) == loads_before  # nothing was read from the files again
    assert "weights placed again from host memory" in _report(again), _report(again)
    holdings = _holdings(comfy)
    assert holdings["registered"] and holdings["placed"], holdings


def _tiny_upscaler(path) -> None:
    """A 4x upscale model of spandrel's Compact architecture (2k parameters), random weights."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    save_file(Compact(num_feat=4, num_conv=1, upscale=4).state_dict(), str(path))


@pytest.mark.parametrize("server", ["0.3.75", "0.8.0"])
def test_a_native_node_that_needs_memory_releases_the_pipeline(tmp_path_factory, server: str):
    """ComfyUI's own upscale node asks its memory manager for room (free_memory); with smart memory off
    (ComfyUI's --disable-smart-memory, so that the test's machine need not be short of memory) that unloads
    every model it manages, QwenFit's included, while that node runs."""
    from comfy_host import ComfyHost
    from conftest import PACK_LINK_NAME, SAMPLE, require_080

    if server == "0.8.0":
        require_080()
    base = tmp_path_factory.mktemp(f"comfy-smart-memory-off-{server}")
    host = ComfyHost(base, pack_link_name=PACK_LINK_NAME, extra_args=("--disable-smart-memory",), server=server)
    host.prepare()
    host.add_input(SAMPLE)
    (base / "models" / "upscale_models").mkdir(parents=True, exist_ok=True)
    _tiny_upscaler(base / "models" / "upscale_models" / "qwenfit_tiny_x4.safetensors")
    graph = edit_graph(seed=31, width=64, height=64)
    graph["20"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "qwenfit_tiny_x4.safetensors"}}
    graph["21"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["20", 0], "image": ["3", 0]}}
    graph["22"] = {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": "upscaled"}}
    with host:
        first = host.run(graph)
        assert first.status == "success", first.error_text()
        holdings = _holdings(host)
        assert holdings["release_count"] >= 1 and not holdings["placed"], holdings
        assert "21" in [release["node"] for release in holdings["releases"]], holdings  # the upscale node asked
        graph["3"]["inputs"]["seed"] = 32
        again = host.run(graph)  # QwenFit places its weights again, the upscaler takes them back again
        assert again.status == "success", again.error_text()
        assert "weights placed again from host memory" in _report(again), _report(again)
