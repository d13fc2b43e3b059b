"""Two models in one prompt: QwenFit holds one pipeline at a time, so a run node whose loader ran before the
other loader finds its pipeline unloaded, and loads it again by itself instead of failing or computing with
dropped weights."""

from __future__ import annotations

import numpy as np
from conftest import SAMPLE
from graphs import EDIT, LAYERED, edit_graph, loader
from test_lora import _image


def edit_node(pipeline: list, image: list, seed: int) -> dict:
    node = edit_graph(seed=seed)["3"]
    node["inputs"].update(pipeline=pipeline, image=image)
    return node


def test_two_models_in_one_prompt_each_run_with_their_own_weights(comfy):
    graph = {
        "1": loader(LAYERED),
        "2": {"class_type": "LoadImage", "inputs": {"image": SAMPLE.name}},
        # The Edit's picture is the monitor's chart of the Layered loader's output, and the Edit's result is the
        # Layered node's picture: both loaders run before the Edit, the Edit before the Layered node.
        "5": {"class_type": "QwenFitVRAMMonitor", "inputs": {"anything": ["1", 0]}},
        "10": loader(EDIT),
        # The Edit node of the usual test graph, fed by this prompt's Edit loader and the monitor's chart.
        "11": edit_node(pipeline=["10", 0], image=["5", 2], seed=3),
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "switch_edit"}},
        "3": {
            "class_type": "QwenFitLayeredDecompose",
            "inputs": {
                "pipeline": ["1", 0],
                "image": ["11", 0],
                "layers": 2,
                "resolution": "640",
                "prompt": "a house",
                "negative_prompt": " ",
                "true_cfg_scale": 4.0,
                "steps": 2,
                "seed": 9,
                "save_psd": False,
                "filename_prefix": "QwenFit/switch",
            },
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "switch_layers"}},
    }
    assert comfy.run(edit_graph(seed=41)).status == "success"  # the server holds the Edit model now
    before = comfy.log().count("QwenFit: loading ")
    result = comfy.run(graph)
    assert result.status == "success", result.error_text()
    assert np.isfinite(_image(result)).all() and len(result.files) >= 2
    # Whichever loader runs first, the Layered node (and, with the Edit loader first, the Edit too) finds its
    # pipeline replaced by the other loader and loads it again: three loads (two: nothing was stale).
    loads = [line for line in comfy.log().splitlines() if "QwenFit: loading " in line or "QwenFit: releasing " in line]
    assert comfy.log().count("QwenFit: loading ") - before == 3, loads
