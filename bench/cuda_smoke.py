"""CUDA smoke run of the loading and placement paths CI cannot reach (no GPU there).

Builds the tiny models (every file layout), then on the GPU loads each layout under each offload mode
and precision, runs a 2-step Edit and a 2-step Layered, and records success, seconds and peak memory.
Not a benchmark: the tiny models say nothing about speed; they prove the CUDA code paths run.

    python bench/cuda_smoke.py --tokenizer DIR --work /tmp/qwenfit --out OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only-fill-check", action="store_true", help="only the mid-fill whole-GPU checks")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from optim import (
        DiffusersFolder,
        EditJob,
        LayeredJob,
        LoadRequest,
        OffloadSettings,
        PrecisionSettings,
        SplitFiles,
        VaeSettings,
        load_pipeline,
        release_memory,
        run_edit,
        run_layered,
    )
    from tools.tiny_models import main as build_tiny

    build_tiny(["--tokenizer", str(args.tokenizer), "--out", str(args.work / "diffusers")])
    models = args.work
    image = Image.open(REPO / "example_workflows" / "inputs" / "qwenfit_sample.png").convert("RGB")
    te, vae, lvae = (
        models / "text_encoders" / "qwenfit_tiny_qwen_2.5_vl.safetensors",
        models / "vae" / "qwenfit_tiny_qwen_image_vae.safetensors",
        models / "vae" / "qwenfit_tiny_qwen_image_layered_vae.safetensors",
    )
    sources = {
        "folder edit-2509": DiffusersFolder(models / "diffusers" / "qwenfit-tiny-edit-2509"),
        "split 2509 fp8 scaled": SplitFiles(
            models / "diffusion_models" / "qwenfit_tiny_edit_2509_fp8_e4m3fn.safetensors",
            models / "text_encoders" / "qwenfit_tiny_qwen_2.5_vl_fp8_scaled.safetensors",
            vae,
            args.tokenizer,
        ),
        "split 2511 fp8 mixed": SplitFiles(
            models / "diffusion_models" / "qwenfit_tiny_edit_2511_fp8mixed.safetensors", te, vae, args.tokenizer
        ),
        "split layered bf16": SplitFiles(
            models / "diffusion_models" / "qwenfit_tiny_layered_bf16.safetensors", te, lvae, args.tokenizer
        ),
    }
    rows: list[dict] | None = None if args.only_fill_check else []
    fill_rows = _mid_fill_checks(sources, image)
    for row in fill_rows:
        print(json.dumps(row), flush=True)
    for name, source in sources.items() if rows is not None else ():
        for mode in ("none", "model", "blocks"):
            for precision in ("auto", "fp8_e4m3fn"):
                row = {"source": name, "offload": mode, "precision": precision}
                torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                try:
                    loaded = load_pipeline(
                        LoadRequest(
                            source=source,
                            offload=OffloadSettings(mode=mode),
                            device="cuda:0",
                            precision=PrecisionSettings(transformer=precision, text_encoder=precision),
                        )
                    )
                    row["load_s"] = round(time.perf_counter() - start, 2)
                    view = loaded.with_vae(VaeSettings())
                    start = time.perf_counter()
                    if "layered" in name:
                        result = run_layered(
                            view, image.convert("RGBA"), LayeredJob(layers=2, steps=2, prompt="a house")
                        )
                        row["output"] = list(result.rgb.shape)
                        row["finite"] = bool(torch.isfinite(result.rgb).all())
                    else:
                        result = run_edit(view, [image], EditJob(prompt="snow", steps=2, width=256, height=256))
                        row["output"] = list(result.image.shape)
                        row["finite"] = bool(torch.isfinite(result.image).all())
                    row["run_s"] = round(time.perf_counter() - start, 2)
                    row["phases"] = result.record.describe()
                    row["peak_alloc_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                    row["plan"] = result.record.plan
                    row["ok"] = True
                    del loaded, view, result
                except Exception as exc:  # record and go on: this run is for finding what breaks
                    row["ok"] = False
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    row["trace"] = traceback.format_exc()[-2000:]
                release_memory()
                row["after_MiB"] = round(torch.cuda.memory_allocated() / 2**20, 1)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("plan", "trace")}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = rows or []
    (args.out / "cuda_smoke.json").write_text(
        json.dumps({"gpu": torch.cuda.get_device_name(0), "rows": rows, "mid_fill": fill_rows}, indent=1)
    )
    return 0 if all(r["ok"] for r in rows + fill_rows) else 1


def _mid_fill_checks(sources: dict, image) -> list[dict]:
    """A whole-GPU run that starts while the weights are still being read (reads slowed) gives the image
    of a pipeline whose weights were all in first: resident blocks and text-encoder units are copied to
    the GPU as their slices arrive (BlockStreamer._place_when_filled), and each waits only for its own."""
    import torch

    import optim.execution.arena_fill as arena_fill
    from optim import EditJob, LoadRequest, OffloadSettings, load_pipeline, release_memory, run_edit

    job = EditJob(prompt="snow", steps=2, width=256, height=256)
    read_all = arena_fill.read_all
    rows = []
    for name in ("folder edit-2509", "split 2509 fp8 scaled"):
        row = {"check": "mid-fill whole GPU", "source": name}
        try:
            request = LoadRequest(source=sources[name], offload=OffloadSettings(mode="none"), device="cuda:0")
            filled = load_pipeline(request).wait_until_filled()
            expected = run_edit(filled, [image], job).image
            filled.engine.release()
            del filled
            arena_fill.read_all = lambda jobs: (time.sleep(0.02), read_all(jobs))[1]
            try:
                # Loaded inside inference mode, as ComfyUI runs its nodes: the buffers the filling thread
                # copies into are then inference tensors (a ComfyUI server on the GPU failed so, 2026-11-30).
                with torch.inference_mode():
                    loaded = load_pipeline(request)
                    row["pending_at_run_start"] = arena_fill.current_stats().pending
                    got = run_edit(loaded, [image], job).image
            finally:
                arena_fill.read_all = read_all
            row["equal"] = bool(torch.equal(got, expected))
            # ComfyUI's memory manager asks for the GPU memory back: it goes, and the next run places the
            # weights again from host memory and gives the same image.
            torch.cuda.synchronize()
            held_before = torch.cuda.memory_allocated()
            row["released_bytes"] = loaded.release_gpu()
            row["allocated_before_release"] = held_before
            row["allocated_after_release"] = torch.cuda.memory_allocated()
            with torch.inference_mode():  # the next ComfyUI node's run
                again = run_edit(loaded, [image], job).image
            row["equal_after_release"] = bool(torch.equal(again, expected))
            row["ok"] = (
                row["equal"]
                and row["pending_at_run_start"] > 0
                and row["equal_after_release"]
                and row["allocated_after_release"] < held_before - 0.9 * row["released_bytes"]
            )
            loaded.engine.release()
            del loaded
        except Exception as exc:
            row["ok"] = False
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["trace"] = traceback.format_exc()[-8000:]
        release_memory()
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
