"""Where a step's time goes: each configuration run twice (warm, then under torch.profiler), summarised per GPU.

For each GPU: the profiled span, the time its kernels and copies ran (union of intervals), idle time, kernel
and copy counts; for the host: how long each transformer call took to *queue* (no wait for the GPU) against
the step it belongs to. A host that queues a step about as slowly as the GPUs run it is the limit.
Usage (GPU machine): python3 bench/step_profile.py --tokenizer T --out DIR --jobs edit-lightning --configs a,b
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench.baselines import baseline_configurations, free_device_memory, restore_components  # noqa: E402
from bench.jobs import JOBS, run_job  # noqa: E402
from bench.measure import PhaseMeter  # noqa: E402
from bench.realsize import build_components, fingerprint  # noqa: E402
from bench.run_bench import qwenfit_configurations, select_configurations  # noqa: E402


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarise_trace(path: Path) -> dict[str, Any]:
    """Per-device busy time from a chrome trace (microseconds in, seconds out)."""
    events = json.loads(path.read_text())["traceEvents"]
    devices: dict[int, dict[str, list]] = {}
    launches = 0
    for event in events:
        cat = event.get("cat", "")
        if cat == "cuda_runtime" and "Launch" in event.get("name", ""):
            launches += 1
        if cat not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        device = int(event.get("args", {}).get("device", -1))
        slot = devices.setdefault(device, {"kernel": [], "copy": []})
        interval = (float(event["ts"]), float(event["ts"]) + float(event.get("dur", 0)))
        slot["kernel" if cat == "kernel" else "copy"].append(interval)
    out: dict[str, Any] = {"launches": launches, "devices": {}}
    for device, slot in sorted(devices.items()):
        every = slot["kernel"] + slot["copy"]
        span = max(b for _, b in every) - min(a for a, _ in every)
        busy = _union(every)
        out["devices"][device] = {
            "span_s": span / 1e6,
            "busy_s": busy / 1e6,
            "idle_s": (span - busy) / 1e6,
            "kernel_s": _union(slot["kernel"]) / 1e6,
            "copy_s": _union(slot["copy"]) / 1e6,
            "kernels": len(slot["kernel"]),
            "copies": len(slot["copy"]),
        }
    return out


def _sync_all() -> None:
    for index in range(torch.cuda.device_count()):
        torch.cuda.synchronize(index)


def timed_calls(transformer: torch.nn.Module, args: tuple, kwargs: dict, calls: int) -> list[dict[str, float]]:
    """The transformer called again with a step's inputs: when the host got back (queued) and when every
    GPU had finished (done), seconds from the call."""
    out = []
    for _ in range(calls):
        _sync_all()
        start = time.perf_counter()
        transformer(*args, **kwargs)
        queued = time.perf_counter() - start
        _sync_all()
        out.append({"queued_s": queued, "done_s": time.perf_counter() - start})
    return out


def _keep(into: dict[str, Any], _module: Any, args: tuple, kwargs: dict) -> None:
    into.update(args=args, kwargs=kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", default="edit-lightning")
    parser.add_argument("--configs", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--arch", default="qwen-image", choices=("qwen-image", "qwenfit-tiny"))
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    job = JOBS[args.jobs](steps=args.steps, seed=0)
    extra, error = qwenfit_configurations()
    if error:
        raise SystemExit(error)
    configs = select_configurations(baseline_configurations() + extra, args.configs, False)
    park = "cpu" if device.type == "cuda" else None
    build = partial(build_components, args.arch, job.variant, device, torch.bfloat16, args.tokenizer, park_on=park)
    components = build()
    original = fingerprint(components)
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "job": job.describe(),
        "rows": [],
    }
    # Only the last configuration runs under torch.profiler (the others are timed only): that is how the
    # committed results were taken. A crash first blamed on the profiler came from preparing a configuration
    # on weights a release had freed; the rebuild below (as bench/run_bench.py does) is the fix.
    for config in configs:
        profiling = config is configs[-1] and os.environ.get("QF_NO_PROFILE") is None
        components["job"] = job
        try:
            pipeline = config.prepare(components, device)
            captured: dict[str, Any] = {}
            hook = pipeline.transformer.register_forward_pre_hook(partial(_keep, captured), with_kwargs=True)
            warm = run_job(pipeline, job, PhaseMeter(device, job.steps, config.pinned_bytes))
            hook.remove()
            with torch.inference_mode():
                calls = timed_calls(pipeline.transformer, captured["args"], captured["kwargs"], 3)
                trace = args.out / f"{config.key}.trace.json"
                activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
                with profile(activities=activities) if profiling else nullcontext() as prof:
                    timed_calls(pipeline.transformer, captured["args"], captured["kwargs"], 1)
            row = {"config": config.name, "steady_s_per_step": warm.measurement.seconds_per_step_steady, "calls": calls}
            if profiling:
                prof.export_chrome_trace(str(trace))
                row["profiled_call"] = summarise_trace(trace)
                trace.unlink()
            report["rows"].append(row)
            print(json.dumps(row, indent=1), flush=True)
            config.release(pipeline)
            del pipeline, warm, captured
        except Exception:
            traceback.print_exc()
            sys.stdout.flush()
        free_device_memory()
        restore_components(components)
        if fingerprint(components) != original:  # the release left other weights: fresh ones, as run_bench does
            del components
            free_device_memory()
            components = build()
        (args.out / "profile.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
