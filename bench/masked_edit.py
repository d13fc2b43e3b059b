"""Masked editing costs what its crop costs (issue 19): a 1024x1024 region of a 4096x4096 picture against a
plain 1024x1024 edit, same files, same plan, same steps.

    python bench/masked_edit.py --models DIR [--arch qwen-image] [--device cuda] [--steps 8] --out FILE.json

The files are ``bench/comfy_native.py write``'s (real-size random weights, ComfyUI's split files: fp8 scaled
transformer, fp8 text encoder, VAE); they are written into ``--models`` first when missing (``--tokenizer``
defaults to ComfyUI's qwen25_tokenizer in .cache/comfyui). One process loads them once through the pack's
loader (precision auto, ``--speed``, offload none: the whole card) and runs, in this order, each twice (the
first run of each carries compilation and warm-up; the second is the one compared):
  plain:  ``run_edit`` of a ``--region``-sized picture at width = height = ``--region``;
  masked: ``run_edit`` of a ``--picture``-sized picture with a MASK of 1 on a centred ``--region`` square,
          mask_mode crop_and_stitch, context margin 0 and feather 0 (the crop is the region itself; the
          defaults would crop 64 px wider, still edited at ~1 MP: the same work) at width = height =
          ``--region``: the crop is edited at the plain job's size, then pasted back.
Measured per run: seconds (``EditResult.seconds``: text encoding to the stitched picture), the run record's
peak reserved bytes, torch's peak allocated bytes (reset before each run), and the stitched picture's
exactness outside the mask. The verdict: masked seconds <= 1.05 x plain, masked peak <= plain peak
(+ the picture's own float32 copies, 3 x 4096^2 x 4 B x 2 = 0.4 GiB, counted on the host, not the GPU).

CPU dry run on the tiny architecture (the timings mean nothing; checks the script end to end):
    python bench/masked_edit.py --arch qwenfit-tiny --device cpu --models /tmp/masked-tiny --steps 2 \
        --picture 1024 --region 256 --out /tmp/masked-tiny.json
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

from bench.comfy_native import TEXT_ENCODER, TRANSFORMER_SCALED, VAE, write  # noqa: E402

TOKENIZER = REPO / ".cache" / "comfyui" / "comfy" / "text_encoders" / "qwen25_tokenizer"
PROMPT = "replace the object with a red vase"
TIME_TOLERANCE = 1.05


def _ensure_files(a: argparse.Namespace) -> None:
    if all((a.models / name).is_file() for name in (TRANSFORMER_SCALED, TEXT_ENCODER, VAE)):
        return
    print(f"[masked_edit] writing {a.arch} files into {a.models} ...", flush=True)
    write(a.tokenizer, a.models, ["scaled"], a.arch, a.device, a.region)


def _picture(size: int):
    """A deterministic picture (``bench.jobs.synthetic_image``) as ComfyUI's IMAGE values and as PIL."""
    import numpy as np
    import torch

    from bench.jobs import synthetic_image

    pil = synthetic_image(size, "RGB")
    return torch.from_numpy(np.asarray(pil).astype(np.float32) / 255.0), pil


def _measure(run, cuda: bool) -> dict:
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run()
    if cuda:
        torch.cuda.synchronize()
    return {
        "wall_seconds": time.perf_counter() - start,
        "seconds": result.seconds,
        "peak_reserved_bytes": result.record.peak_reserved,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "phases": {p.name: p.seconds for p in result.record.phases},
        "size": list(result.image.shape[1:3]),
        "_result": result,
    }


def run(a: argparse.Namespace) -> dict:
    import torch

    from optim import (
        EditJob,
        LoadRequest,
        MaskedPicture,
        MaskSettings,
        OffloadSettings,
        PrecisionSettings,
        SplitFiles,
        load_pipeline,
        run_edit,
    )

    cuda = a.device == "cuda"
    record: dict = {
        "arch": a.arch,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "picture": a.picture,
        "region": a.region,
        "steps": a.steps,
        "speed": a.speed,
    }
    try:
        _ensure_files(a)
        source = SplitFiles(a.models / TRANSFORMER_SCALED, a.models / TEXT_ENCODER, a.models / VAE, a.tokenizer)
        request = LoadRequest(
            source, precision=PrecisionSettings(speed=a.speed), offload=OffloadSettings(mode="none"), device=a.device
        )
        start = time.perf_counter()
        loaded = load_pipeline(request)
        record["load_seconds"] = time.perf_counter() - start
        job = EditJob(PROMPT, true_cfg_scale=a.cfg, steps=a.steps, seed=a.seed, width=a.region, height=a.region)
        _, small = _picture(a.region)
        big_values, big = _picture(a.picture)
        mask = torch.zeros(a.picture, a.picture)
        low = (a.picture - a.region) // 2
        mask[low : low + a.region, low : low + a.region] = 1.0
        masked = MaskedPicture(big_values, mask, MaskSettings(context_margin=0, feather=0))
        runs: dict = {"plain": [], "masked": []}
        for name in ("plain", "masked"):
            for _ in range(2):
                if name == "plain":
                    runs[name].append(_measure(lambda: run_edit(loaded, [small], job), cuda))
                else:
                    runs[name].append(_measure(lambda: run_edit(loaded, [big], job, masked=masked), cuda))
        last = runs["masked"][-1].pop("_result")
        for entries in runs.values():
            for entry in entries:
                entry.pop("_result", None)
        out = last.image[0]
        outside = mask == 0
        record["masked_report"] = last.report.split("\nlast run")[0]
        record["outside_exact"] = bool(torch.equal(out[outside], big_values[outside]))
        record["runs"] = runs
        plain, masked_run = runs["plain"][-1], runs["masked"][-1]
        record["time_ratio"] = masked_run["seconds"] / plain["seconds"]
        record["peak_reserved_ratio"] = masked_run["peak_reserved_bytes"] / max(plain["peak_reserved_bytes"], 1)
        record["verdict"] = {
            "time_within_5_percent": record["time_ratio"] <= TIME_TOLERANCE,
            "peak_of_the_plain_job": masked_run["peak_reserved_bytes"] <= plain["peak_reserved_bytes"],
            "outside_exact": record["outside_exact"],
        }
    except Exception as error:
        record["error"] = f"{type(error).__name__}: {error}"[:2000]
        record["traceback"] = traceback.format_exc()[-4000:]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="comfy_native.py write's folder (written if empty)")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER)
    parser.add_argument("--arch", default="qwen-image", help="qwenfit-tiny for the CPU dry run")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--speed", default="exact", help="the speed rung (exact, fast, fastest)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--picture", type=int, default=4096, help="side of the masked picture")
    parser.add_argument("--region", type=int, default=1024, help="side of the masked square and of the plain job")
    parser.add_argument("--out", type=Path)
    a = parser.parse_args(argv)
    result = run(a)
    text = json.dumps(result, indent=1, default=str)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    print(text)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
