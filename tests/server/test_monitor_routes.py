"""The /qwenfit/ routes through the real server: sane answers, 400 with a reason for bad parameters,
no file paths anywhere; the VRAM monitor node's report and chart after a run."""

from __future__ import annotations

import io
import json
import time

import pytest
from conftest import SAMPLE
from PIL import Image

from tools.presets import TINY_STAND_INS

GIB = 1024**3
EDIT = "qwenfit_tiny_edit_2509_bf16.safetensors"
LAYERED = "qwenfit_tiny_layered_fp8mixed.safetensors"


def assert_no_paths(comfy, response) -> None:
    text = response.text
    assert str(comfy.base) not in text and str(comfy.models) not in text and str(comfy.comfy) not in text
    assert "/home/" not in text and "/tmp/" not in text and "/work/" not in text


def test_memory_now(comfy):
    response = comfy.get("/qwenfit/memory")
    assert response.status_code == 200
    data = response.json()
    assert data["gpus"] == []  # the test host runs on the CPU
    assert 0 < data["host_used_bytes"] <= data["host_total_bytes"]
    assert 0 < data["rss_bytes"] < data["host_total_bytes"]
    assert data["pinned_bytes"] == 0 and data["live"] is True and data["source"] == "none"
    assert comfy.get("/api/qwenfit/memory").status_code == 200  # ComfyUI's /api mirror


def test_memory_history_is_sampled_a_few_times_a_second(comfy):
    # The sampler starts with the server, which may have answered a moment ago, and a busy machine may hold
    # its thread back for a while: wait (deadline only for a sampler that never samples) for a full window.
    deadline = time.monotonic() + 120
    while True:
        data = comfy.get("/qwenfit/memory/history", seconds=2).json()
        times = [s["t"] for s in data["samples"]]
        if len(times) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.25)  # polling interval, not a guess: the loop waits for the samples themselves
    assert 6 <= len(times) <= 12, times  # 4 samples a second: never more, and at least 6 once unhindered
    assert times == sorted(times) and data["now"] - times[-1] < 2.0


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/qwenfit/memory", {"x": "1"}, "x"),
        ("/qwenfit/memory/history", {"seconds": "0"}, "seconds"),
        ("/qwenfit/memory/history", {"seconds": "1e9"}, "seconds"),
        ("/qwenfit/memory/history", {"seconds": "-5"}, "seconds"),
        ("/qwenfit/last_run", {"model": EDIT}, "model"),
        ("/qwenfit/plan_preview", {}, "model"),
        ("/qwenfit/plan_preview", {"model": "../../etc/passwd"}, "model"),
        ("/qwenfit/plan_preview", {"model": "/etc/passwd"}, "model"),
        ("/qwenfit/plan_preview", {"model": EDIT, "vae": "../vae/x.safetensors"}, "vae"),
        ("/qwenfit/plan_preview", {"model": EDIT, "text_encoder": "model.ckpt"}, "text_encoder"),
        ("/qwenfit/plan_preview", {"model": EDIT, "vram_budget": "9 GB"}, "vram_budget"),
        ("/qwenfit/plan_preview", {"model": EDIT, "precision_transformer": "fp4"}, "precision_transformer"),
        ("/qwenfit/plan_preview", {"model": EDIT, "precision_vae": "nf4"}, "precision_vae"),
        ("/qwenfit/plan_preview", {"model": EDIT, "offload_mode": "sometimes"}, "offload_mode"),
        ("/qwenfit/plan_preview", {"model": EDIT, "width": "1000", "height": "1024"}, "width"),
        ("/qwenfit/plan_preview", {"model": EDIT, "width": "1024"}, "height"),
        ("/qwenfit/plan_preview", {"model": EDIT, "steps": "ten"}, "steps"),
        ("/qwenfit/plan_preview", {"model": EDIT, "steps": "201"}, "steps"),
        ("/qwenfit/plan_preview", {"model": EDIT, "references": "4"}, "references"),
        ("/qwenfit/plan_preview", {"model": EDIT, "layers": "11"}, "layers"),
        ("/qwenfit/plan_preview", {"model": EDIT, "resolution": "800"}, "resolution"),
        ("/qwenfit/plan_preview", {"model": EDIT, "aspect": "nan"}, "aspect"),
        ("/qwenfit/plan_preview", {"model": EDIT, "caption": "maybe"}, "caption"),
        ("/qwenfit/plan_preview", {"model": EDIT, "budget": "8"}, "budget"),
    ],
)
def test_bad_parameters_get_400_with_a_reason(comfy, path, params, parameter):
    response = comfy.get(path, **params)
    assert response.status_code == 400, response.text
    data = response.json()
    assert data["parameter"] == parameter and len(data["error"]) > 10
    assert_no_paths(comfy, response)


def test_a_parameter_given_twice_is_refused(comfy):
    response = comfy.get("/qwenfit/plan_preview", model=[EDIT, LAYERED])
    assert response.status_code == 400 and response.json()["parameter"] == "model"


def preview(comfy, **params):
    response = comfy.get("/qwenfit/plan_preview", **params)
    assert response.status_code == 200, response.text
    assert_no_paths(comfy, response)
    return response.json()


def test_plan_preview_of_split_files_is_sane(comfy):
    data = preview(comfy, model=EDIT, vram_budget="8 GB", width=512, height=512, steps=3)
    assert data["ok"] is True, data
    assert data["variant"] == "edit-2509" and data["job"]["kind"] == "edit"
    assert [p["name"] for p in data["phases"]] == ["encode", "denoise", "decode"]
    peak = data["predicted_peak_bytes"]
    assert peak == max(p["peak_bytes"] for p in data["phases"])
    weights = sum(data["weights"].values())
    assert weights < peak < 8 * GIB  # the tiny models: weights plus the activation model
    assert 0 < data["seconds_per_step"] < 60
    assert data["plan"]["resident_blocks"] == data["plan"]["blocks"] == 2
    assert data["device"].startswith("no GPU")
    # A larger job needs more.
    bigger = preview(comfy, model=EDIT, width=1024, height=1024, references=3, steps=3)
    assert bigger["predicted_peak_bytes"] > peak and bigger["job"]["references"] == 3


def test_plan_preview_of_a_folder_and_of_layered(comfy):
    data = preview(comfy, model="qwenfit-tiny-layered", layers=6, resolution=1024, caption=1)
    assert data["ok"] and data["variant"] == "layered"
    assert data["job"] == {**data["job"], "kind": "layered", "layers": 6, "width": 1024, "caption": True}
    auto = preview(comfy, model=LAYERED, precision_transformer="int8")
    assert auto["ok"] and auto["job"]["layers"] == 4 and auto["job"]["steps"] == 50


def test_plan_preview_says_why_when_no_plan_can_be_made(comfy):
    data = preview(comfy, model=LAYERED, job="edit")
    assert data["ok"] is False and "InstructEdit needs an Edit model" in data["error"]
    broken = preview(comfy, model="broken-no-transformer")
    assert broken["ok"] is False and "transformer" in broken["error"]


def test_last_run_and_monitor_node_after_a_run(comfy):
    graph = {
        "1": {
            "class_type": "QwenFitOptimizedLoader",
            "inputs": {"model": TINY_STAND_INS[next(iter(TINY_STAND_INS))], "variant": "auto"},
        },  # fmt: skip
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
                "seed": 1,
                "width": 128,
                "height": 128,
            },  # fmt: skip
        },
        "4": {"class_type": "QwenFitVRAMMonitor", "inputs": {"anything": ["3", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 2]}},
    }
    result = comfy.run(graph)
    assert result.status == "success", result.error_text()
    runs = [e["data"] for e in result.events if e["type"] == "qwenfit.run"]
    assert len(runs) == 1 and runs[0]["node"] == "3"
    record = runs[0]["record"]
    assert [p["name"] for p in record["phases"]] == ["encode", "denoise", "decode"]
    assert record["predicted_peak_bytes"] > 0 and record["seconds_per_step"] > 0
    assert any(e["type"] == "qwenfit.memory" and e["data"]["phase"] == "denoise" for e in result.events)
    # The route tells the same.
    response = comfy.get("/qwenfit/last_run")
    assert_no_paths(comfy, response)
    assert response.json()["record"]["seconds_per_step"] == record["seconds_per_step"]
    # The monitor's report and chart.
    text = "\n".join(result.outputs["4"]["text"])
    assert "no GPU" in text and "pinned by QwenFit 0.00 GiB" in text and "s/step" in text
    assert "plan that ran:" in text and "measured vs planned peak" in text
    images = result.outputs["5"]["images"]
    chart = comfy.get("/view", filename=images[0]["filename"], type=images[0]["type"], subfolder=images[0]["subfolder"])
    picture = Image.open(io.BytesIO(chart.content))
    assert picture.size == (768, 384)
    # The history holds the run's phases, in order.
    marks = [m["label"] for m in comfy.get("/qwenfit/memory/history", seconds=120).json()["marks"]]
    assert marks[-4:] == ["encode", "denoise", "decode", "end"]
    json.dumps(result.outputs)  # plain data all the way
    # How long the load took: in the loader's plan text, the run report, and the preview of what is loaded.
    assert any("loaded in " in line for line in result.outputs["1"]["text"])
    assert "loaded in " in record["plan"]
    model = TINY_STAND_INS[next(iter(TINY_STAND_INS))]
    notes = comfy.get("/qwenfit/plan_preview", model=model).json()["notes"]
    assert any(note.startswith("loaded in ") for note in notes), notes


def test_the_server_switch_keeps_the_sampler_off(tmp_path, monkeypatch):
    """QWENFIT_LIVE_MONITOR=0: no sampler thread, no events; the routes still read memory on demand."""
    import websocket
    from comfy_host import ComfyHost
    from conftest import PACK_LINK_NAME

    monkeypatch.setenv("QWENFIT_LIVE_MONITOR", "0")
    with ComfyHost(tmp_path, pack_link_name=PACK_LINK_NAME) as host:
        ws = websocket.create_connection(f"ws://127.0.0.1:{host.port}/ws?clientId=switch-test", timeout=2)
        try:
            deadline, kinds = time.monotonic() + 1.5, set()
            while time.monotonic() < deadline:
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    break
                if isinstance(raw, str):
                    kinds.add(json.loads(raw)["type"])
        finally:
            ws.close()
        assert "qwenfit.memory" not in kinds
        now = host.get("/qwenfit/memory").json()
        assert now["live"] is False and now["host_total_bytes"] > 0
        history = host.get("/qwenfit/memory/history", seconds=10).json()
        assert history["live"] is False and history["samples"] == []
