"""A run's report prints the one plan of that run: it never contradicts itself (the VAE tiling once
appeared twice, "off" from the load-time overview and "decode on" from the run's plan)."""

from __future__ import annotations

import re

import pytest
from PIL import Image
from tiny_files import FOLDER, MODELS

import optim.loading.loader as loader
from optim import DiffusersFolder, EditJob, LoadRequest, OffloadSettings, load_pipeline, run_edit
from optim.planning.planner import Gpu

GIB = 1024**3


@pytest.mark.parametrize("mode", ["auto", "model"])
def test_the_report_states_vae_tiling_once(monkeypatch, mode):
    # A 3 GiB card described to the planner: a 1024x1024 decode (4.4 GiB untiled) must tile.
    monkeypatch.setattr(loader, "resolve_gpus", lambda offload, device: ((Gpu("cpu", 3 * GIB),), ()))
    folder = DiffusersFolder(MODELS / "diffusers" / FOLDER["edit-2509"])
    loaded = load_pipeline(LoadRequest(folder, offload=OffloadSettings(mode=mode)))
    try:
        job = EditJob(prompt="snow", steps=2, width=1024, height=1024)
        report = run_edit(loaded, [Image.new("RGB", (64, 64), (90, 60, 30))], job).report
    finally:
        if loaded.engine is not None:
            loaded.engine.release()
    assert len(re.findall(r"VAE tiling", report)) == 1, report
    # The engine's planner tiles what does not fit; diffusers' whole-model offload on the CPU never tiles.
    assert ("decode on" if mode == "auto" else "decode off") in report, report
    assert len(re.findall(r"QwenFit plan for", report)) == 1, report
