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
    image = Image.open(REPO / "workflows" / "inputs" / "qwenfit_sample.png").convert("RGB")
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
    rows = []
    for name, source in sources.items():
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
    (args.out / "cuda_smoke.json").write_text(
        json.dumps({"gpu": torch.cuda.get_device_name(0), "rows": rows}, indent=1)
    )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
