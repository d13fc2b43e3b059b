"""Each run records seconds per phase and s/step; the VRAM monitor reports the last run."""

from __future__ import annotations

from conftest import SAMPLE
from PIL import Image
from tiny_files import split_files

from optim import EditJob, LoadRequest, load_pipeline, run_edit
from optim.monitoring.run_record import PHASES, last_run


def test_run_records_every_phase_and_seconds_per_step():
    loaded = load_pipeline(LoadRequest(source=split_files("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509")))
    result = run_edit(
        loaded, [Image.open(SAMPLE).convert("RGB")], EditJob(prompt="snow", steps=3, width=128, height=128)
    )
    record = result.record
    assert tuple(p.name for p in record.phases) == PHASES
    assert all(p.seconds > 0 for p in record.phases)
    denoise = record.phases[1].seconds
    assert abs(record.seconds_per_step - denoise / 3) < 1e-9
    assert last_run() is record
    assert "s/step" in result.report and "denoise" in result.report


def test_vram_monitor_reports_the_last_run(comfy):
    graph = {
        "1": {
            "class_type": "QwenFitOptimizedLoader",
            "inputs": {"model": "qwenfit_tiny_edit_2509_bf16.safetensors", "variant": "auto"},
        },
        "2": {"class_type": "LoadImage", "inputs": {"image": SAMPLE.name}},
        "3": {
            "class_type": "QwenFitInstructEdit",
            "inputs": {
                "pipeline": ["1", 0],
                "image": ["2", 0],
                "prompt": "snow",
                "negative_prompt": " ",
                "true_cfg_scale": 4.0,
                "steps": 2,
                "seed": 4,
                "width": 128,
                "height": 128,
            },
        },
        "4": {"class_type": "QwenFitVRAMMonitor", "inputs": {"anything": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "monitor"}},
    }
    result = comfy.run(graph)
    assert result.status == "success", result.error_text()
    assert len(result.files) == 1  # the image passed through the monitor unchanged in kind
    text = "\n".join(result.outputs["4"]["text"])
    assert "no GPU" in text and "host RAM" in text
    assert "last run (qwenfit_tiny_edit_2509_bf16.safetensors)" in text and "denoise" in text and "s/step" in text
