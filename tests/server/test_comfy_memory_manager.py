"""ComfyUI's memory manager can take back what QwenFit keeps on the GPU between runs: the held pipeline is
registered as a model ComfyUI manages, an unload from ComfyUI (here its /free route, what the frontend's
"Unload Models" button sends) releases it, and the next QwenFit run places the weights again from host
memory, without loading, to the same image."""

from __future__ import annotations

import time

import numpy as np
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


def test_comfyui_unloading_its_models_releases_the_pipeline_and_the_next_run_places_it_again(comfy):
    first = comfy.run(edit_graph(seed=23))
    expected = _image(first)
    holdings = _holdings(comfy)
    assert holdings["registered"] and holdings["placed"], holdings
    released_before, loads_before = holdings["release_count"], _loads(comfy)

    # ComfyUI's own request: unload every model it manages, and forget its cached node outputs.
    answer = requests.post(f"{comfy.url}/free", json={"unload_models": True, "free_memory": True}, timeout=30)
    assert answer.status_code == 200
    holdings = _wait_for(comfy, lambda h: h["release_count"] > released_before)
    assert holdings["release_count"] == released_before + 1, holdings
    assert not holdings["registered"] and not holdings["placed"] and holdings["gpu_bytes"] == 0, holdings
    assert holdings["releases"][-1]["node"] is None  # asked between prompts, not by a node

    again = comfy.run(edit_graph(seed=23))
    assert np.array_equal(_image(again), expected)  # placed again from host memory: the same weights
    assert _loads(comfy) == loads_before  # nothing was read from the files again
    assert "weights placed again from host memory" in _report(again), _report(again)
    holdings = _holdings(comfy)
    assert holdings["registered"] and holdings["placed"], holdings
