"""Out-of-memory injection and a 20-run soak on the real-size model (issue 8), through the pack's run API.

    python bench/reliability.py --tokenizer DIR --out DIR [--arch qwen-image|qwenfit-tiny] [--runs 20]

1. **OOM injection.** The Edit job planned for a 24 GB card; at the first denoising step the process's
   usable GPU memory is cut to ``--cut-gib`` (``set_per_process_memory_fraction``), below what that plan
   holds. A real ``torch.OutOfMemoryError`` follows; ``run_edit`` must free the run, re-plan one step
   leaner and complete, and the next runs must fit the cut.
2. **Soak.** ``--runs`` runs of the 8 GB plan, alternating prompts, seeds and the two exact/fast CFG
   modes' prompts; after each: GPU memory allocated and reserved, page-locked bytes, host RSS. Growth is
   reported from run 2 (warm caches) to the last.

Writes OUT/reliability.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.measure import host_rss  # noqa: E402
from bench.realsize import build_components, make_pipeline  # noqa: E402
from optim.execution.devices import resolve_gpus  # noqa: E402
from optim.execution.engine import EngineOptions, PipelineEngine  # noqa: E402
from optim.execution.host_arena import pinned_bytes  # noqa: E402
from optim.execution.loaded_pipeline import LoadedPipeline, release_memory  # noqa: E402
from optim.files.sources import DiffusersFolder  # noqa: E402
from optim.jobs.edit import EditJob, run_edit  # noqa: E402
from optim.planning.components import describe_components  # noqa: E402
from optim.planning.load_request import LoadRequest  # noqa: E402
from optim.qwen.variants import Variant  # noqa: E402
from optim.settings import OffloadSettings  # noqa: E402

GIB = 2**30
PROMPTS = ("make the sky purple", "add snow on the roof", "turn it into a watercolour")


def loaded_around(components: dict[str, Any], device: torch.device, budget: str) -> LoadedPipeline:
    """The pack's LoadedPipeline for the benchmark's components, placed by the engine for ``budget``."""
    pipeline = make_pipeline(components, Variant.EDIT_2509)
    offload = OffloadSettings(vram_budget=budget)
    gpus, _ = resolve_gpus(offload, device)
    components_list = describe_components(pipeline, str(device), whole_model_offload=False)
    engine = PipelineEngine(pipeline, device, EngineOptions(offload, gpus), components=components_list)
    request = LoadRequest(
        DiffusersFolder(Path(f"real-size random weights ({budget})")), offload=offload, device=str(device)
    )
    return LoadedPipeline(
        pipeline=pipeline,
        variant=Variant.EDIT_2509,
        request=request,
        sizes=engine.sizes,
        components=components_list,
        gpus=gpus,
        engine=engine,
    )


def snapshot(device: torch.device) -> dict[str, int | None]:
    torch.cuda.synchronize(device)
    return {
        "gpu_allocated": torch.cuda.memory_allocated(device),
        "gpu_reserved": torch.cuda.memory_reserved(device),
        "pinned": pinned_bytes(),
        "rss": host_rss()[1],
    }


def oom_injection(components: dict[str, Any], device: torch.device, size: int, steps: int, cut_gib: float) -> dict:
    loaded = loaded_around(components, device, "24 GB")
    image = Image.new("RGB", (size, size), (120, 160, 200))
    job = EditJob(prompt=PROMPTS[0], steps=steps, seed=1, width=size, height=size)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(22.0 * GIB / total, device)
    result: dict[str, Any] = {"cut_gib": cut_gib}
    try:
        first = run_edit(loaded, [image], job)
        result["before_cut"] = {"seconds": first.seconds, "plan": loaded.engine.describe_peak()}

        def cut(_module: Any, _args: Any) -> None:
            torch.cuda.set_per_process_memory_fraction(cut_gib * GIB / total, device)

        hook = loaded.pipeline.transformer.register_forward_pre_hook(cut)
        start = time.perf_counter()
        try:
            recovered = run_edit(
                loaded, [image], EditJob(prompt=PROMPTS[1], steps=steps, seed=2, width=size, height=size)
            )
        finally:
            hook.remove()
        result["recovered"] = {
            "seconds": time.perf_counter() - start,
            "finite": bool(torch.isfinite(recovered.image).all()),
            "note": next((line for line in recovered.report.splitlines() if "out of GPU memory" in line), None),
            "plan": loaded.engine.describe_peak(),
        }
        torch.cuda.reset_peak_memory_stats(device)
        after = run_edit(loaded, [image], EditJob(prompt=PROMPTS[2], steps=steps, seed=3, width=size, height=size))
        result["next_run"] = {
            "seconds": after.seconds,
            "finite": bool(torch.isfinite(after.image).all()),
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
        }
        result["status"] = "recovered" if result["recovered"]["note"] else "no out-of-memory happened"
    except Exception as exc:  # recorded: the point is to see what happens
        result["status"] = f"failed: {type(exc).__name__}: {exc}"[:600]
    finally:
        loaded.engine.release()
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        release_memory()
    return result


def soak(components: dict[str, Any], device: torch.device, size: int, steps: int, runs: int) -> dict:
    start = snapshot(device)
    loaded = loaded_around(components, device, "8 GB")
    image = Image.new("RGB", (size, size), (90, 140, 60))
    after: list[dict[str, Any]] = []
    try:
        for i in range(runs):
            job = EditJob(prompt=PROMPTS[i % len(PROMPTS)], steps=steps, seed=i, width=size, height=size)
            result = run_edit(loaded, [image], job)
            after.append({"run": i + 1, "seconds": result.seconds, **snapshot(device)})
            print(f"soak run {i + 1}: {after[-1]}", flush=True)
    finally:
        loaded.engine.release()
        release_memory()
    released = snapshot(device)
    growth = {k: (after[-1][k] or 0) - (after[1][k] or 0) for k in ("gpu_allocated", "gpu_reserved", "pinned", "rss")}
    return {"runs": after, "start": start, "after_release": released, "growth_run2_to_last": growth}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", default="qwen-image", choices=("qwen-image", "qwenfit-tiny"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cut-gib", type=float, default=15.0)
    args = parser.parse_args(argv)
    device = torch.device("cuda", torch.cuda.current_device())
    components = build_components(args.arch, Variant.EDIT_2509, device, torch.bfloat16, args.tokenizer, park_on="cpu")
    release_memory()
    report = {
        "gpu": torch.cuda.get_device_name(device),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arch": args.arch,
        "steps": args.steps,
        "size": args.size,
    }
    report["oom_injection"] = oom_injection(components, device, args.size, args.steps, args.cut_gib)
    print(json.dumps(report["oom_injection"], indent=1), flush=True)
    report["soak"] = soak(components, device, args.size, args.steps, args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reliability.json").write_text(json.dumps(report, indent=1))
    growth = report["soak"]["growth_run2_to_last"]
    print("soak growth run 2 -> last (MiB):", {k: round(v / 2**20, 1) for k, v in growth.items()})
    print("after release:", report["soak"]["after_release"], "start:", report["soak"]["start"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
