"""Benchmark every configuration on the Edit and Layered jobs, with real-size random weights.

    python bench/run_bench.py --tokenizer DIR --out DIR [--arch qwen-image|qwenfit-tiny]
        [--device cuda|cpu] [--jobs edit,layered] [--configs name,name] [--steps N]

For each job the components are built once on the device (seeded random weights) and parked in host
memory; then each configuration is prepared, run once, measured and released, and the GPU memory is
checked to be back where it was. The resident bf16 baseline runs first: it is the reference for the
s/step ratio and the latent deviation. Results go to OUT/bench.json and OUT/bench.md after every
configuration, so a timeout keeps what was measured. See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.baselines import (  # noqa: E402
    RESIDENT,
    Skip,
    baseline_configurations,
    free_device_memory,
    remove_diffusers_hooks,
    restore_components,
)
from bench.jobs import JOBS, Job, run_job  # noqa: E402
from bench.measure import PhaseMeter, host_rss, reset_host_rss_peak  # noqa: E402
from bench.realsize import MODULES, build_components, fingerprint, module_bytes  # noqa: E402
from bench.report import environment, latent_deviation, write_report  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def qwenfit_configurations() -> tuple[list[Any], str | None]:
    """Configurations from ``bench/qwenfit_configs.py`` if that module exists: (configs, import error)."""
    if importlib.util.find_spec("bench.qwenfit_configs") is None:
        return [], None
    try:
        module = importlib.import_module("bench.qwenfit_configs")
        return list(module.qwenfit_configurations()), None
    except Exception:  # report it and go on with the baselines
        return [], traceback.format_exc(limit=5)


def split_names(text: str) -> list[str]:
    """Split ``--configs`` on commas outside parentheses ("diffusers group offload (block, stream)")."""
    names, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += char
    names.append(current)
    return [n.strip() for n in names if n.strip()]


def _matches(config: Any, name: str) -> bool:
    keys = {config.name.lower(), str(getattr(config, "key", config.name)).lower()}
    return name.lower() in keys


def select_configurations(available: list[Any], wanted: str | None, with_reference: bool) -> list[Any]:
    """The configurations to run, in order, the resident reference first (unless left out)."""
    chosen = list(available)
    if wanted:
        chosen = []
        for name in split_names(wanted):
            match = [c for c in available if _matches(c, name)]
            if not match:
                known = ", ".join(f"{getattr(c, 'key', c.name)} ({c.name})" for c in available)
                raise SystemExit(f"unknown configuration {name!r}; known: {known}")
            chosen += [c for c in match if c not in chosen]
    reference = next(c for c in available if c.name == RESIDENT)
    chosen = [c for c in chosen if c is not reference]
    return [reference, *chosen] if with_reference else chosen


def gpu_memory(device: torch.device) -> tuple[int | None, int | None]:
    """(allocated, reserved) bytes on ``device``; None without CUDA."""
    if device.type != "cuda":
        return None, None
    torch.cuda.synchronize(device)
    return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)


def _leftovers(components: dict[str, Any]) -> dict[str, int]:
    """What a release left behind: weights off the host, diffusers hook registries."""
    off_host = hooks = 0
    for name in MODULES:
        module = components[name]
        off_host += sum(t.device.type != "cpu" for t in list(module.parameters()) + list(module.buffers()))
        # An empty registry is harmless: the pipeline's cache_context() creates one on the transformer.
        hooks += sum(bool(getattr(getattr(sub, "_diffusers_hook", None), "hooks", None)) for sub in module.modules())
    return {k: v for k, v in {"tensors_off_host": off_host, "modules_with_hooks": hooks}.items() if v}


def run_configuration(
    config: Any, components: dict[str, Any], job: Job, device: torch.device
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Prepare, run, measure and release one configuration; never raises. Returns (row, final latents)."""
    row: dict[str, Any] = {
        "job": job.name,
        "job_description": job.describe(),
        "config": config.name,
        "config_key": getattr(config, "key", None),
        "status": "ok",
    }
    latents = None
    pipeline = None
    before_allocated, before_reserved = gpu_memory(device)
    row["gpu_before_prepare"] = {"allocated_bytes": before_allocated, "reserved_bytes": before_reserved}
    try:
        reset_host_rss_peak()
        start = time.perf_counter()
        pipeline = config.prepare(components, device)
        row["prepare_seconds"] = time.perf_counter() - start
        row["prepare_host_rss_peak_bytes"] = host_rss()[0]  # placing weights may copy them (pinning)
        row["predicted_peak_bytes"] = getattr(config, "predicted_peak_bytes", None)
        result = run_job(pipeline, job, PhaseMeter(device, job.steps, config.pinned_bytes))
        if hasattr(config, "extra_measurements"):  # other GPUs' peaks, measured before the release
            row.update(config.extra_measurements())
        row["measurement"] = result.measurement.to_json()
        row["output"] = result.summary()
        latents = result.measurement.final_latents
        row["latents_finite"] = bool(torch.isfinite(latents).all()) if latents is not None else None
        del result
    except Skip as skip:
        row.update(status="skipped", reason=str(skip))
    except torch.cuda.OutOfMemoryError as oom:
        row.update(status="oom", error=str(oom).splitlines()[0][:300], trace=traceback.format_exc(limit=8))
    except Exception as exc:  # record, release, go on: one broken configuration must not end the run
        row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:300], trace=traceback.format_exc(limit=8))
    row["pinned_note"] = getattr(config, "pinned_note", None)
    start = time.perf_counter()
    try:
        config.release(pipeline)  # None when prepare failed: the configuration undoes what it did
    except Exception as exc:
        row["release_error"] = f"{type(exc).__name__}: {exc}"[:300]
    del pipeline
    free_device_memory()
    row["release_seconds"] = time.perf_counter() - start
    # Measured before the safety net below, so a configuration that leaks is seen leaking.
    after_allocated, after_reserved = gpu_memory(device)
    row["gpu_after_release"] = {"allocated_bytes": after_allocated, "reserved_bytes": after_reserved}
    if after_allocated is not None and before_allocated is not None:
        row["gpu_allocated_after_release_bytes"] = after_allocated - before_allocated
    leftovers = _leftovers(components)
    if leftovers:
        row["release_leftovers"] = leftovers
    try:
        restore_components(components)  # weights back on the host whatever the release did
    except Exception as exc:  # the runner rebuilds the components after this row
        row["restore_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row, latents


def _build(args: argparse.Namespace, job: Job, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    start = time.perf_counter()
    park = "cpu" if device.type != "cpu" else None
    components = build_components(
        args.arch, job.variant, device, DTYPES[args.dtype], args.tokenizer, seed=args.seed, park_on=park
    )
    free_device_memory()
    info = {
        "job": job.name,
        "variant": job.variant.value,
        "build_seconds": time.perf_counter() - start,
        "component_bytes": {name: module_bytes(components[name]) for name in MODULES},
        "fingerprint": fingerprint(components),
    }
    return components, info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokenizer", type=Path, required=True, help="Qwen2.5 tokenizer folder (ComfyUI's qwen25_tokenizer)"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for bench.json and bench.md")
    parser.add_argument("--arch", default="qwen-image", choices=("qwen-image", "qwenfit-tiny"))
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--jobs", default="edit,layered", help=f"comma-separated, of {', '.join(JOBS)}")
    parser.add_argument("--configs", default=None, help="comma-separated keys or names (default: all)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="weights and initial noise")
    parser.add_argument("--dtype", default="bfloat16", choices=tuple(DTYPES))
    parser.add_argument(
        "--no-reference", action="store_true", help="leave out the resident bf16 reference (no ratios or deviations)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a hub
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU; use --device cpu with --arch qwenfit-tiny")
    jobs = [JOBS[name.strip()](steps=args.steps, seed=args.seed) for name in args.jobs.split(",") if name.strip()]
    extra, import_error = qwenfit_configurations()
    if import_error:
        print(f"bench/qwenfit_configs.py failed to import; running the baselines only:\n{import_error}", flush=True)
    configs = select_configurations(baseline_configurations() + extra, args.configs, not args.no_reference)

    env = environment(device)
    settings: dict[str, Any] = {
        "arch": args.arch,
        "steps": args.steps,
        "seed": args.seed,
        "dtype": args.dtype,
        "jobs": [job.name for job in jobs],
        "configs": [c.name for c in configs],
        "reference": RESIDENT,
        "qwenfit_configs_error": import_error,
        "builds": [],
    }
    rows: list[dict[str, Any]] = []
    write_report(args.out, rows, env, settings)
    for job in jobs:
        print(f"== {job.name}: {job.describe()}", flush=True)
        components, info = _build(args, job, device)
        settings["builds"].append(info)
        print(f"   built in {info['build_seconds']:.1f} s", flush=True)
        reference_latents = None
        latents_by_key: dict[str, Any] = {}  # for fast rows: the exact row on the same weights
        for config in configs:
            components["job"] = job  # context for configurations that plan for the job
            row, latents = run_configuration(config, components, job, device)
            if config.name == RESIDENT and latents is not None:
                reference_latents = latents
            if latents is not None and reference_latents is not None:
                try:
                    row.update(latent_deviation(latents, reference_latents))
                except ValueError as exc:
                    row["latent_error"] = str(exc)
            if latents is not None:
                latents_by_key[getattr(config, "key", config.name)] = latents
                exact = latents_by_key.get(getattr(config, "compare_to", None) or "")
                if exact is not None:
                    row["vs_exact_rel_l2"] = latent_deviation(latents, exact)["latent_rel_l2"]
            if "restore_error" in row or fingerprint(components) != info["fingerprint"]:
                # Weights changed under the next configuration's feet: start it from fresh ones.
                row["components_modified"] = True
                for name in MODULES:
                    remove_diffusers_hooks(components[name])
                del components
                free_device_memory()
                components, _ = _build(args, job, device)
            rows.append(row)
            write_report(args.out, rows, env, settings)
            measured = row.get("measurement") or {}
            print(
                f"   {config.name}: {row['status']} {row.get('reason') or row.get('error') or ''}"
                f" total {measured.get('total_seconds')} s/step {measured.get('seconds_per_step')}",
                flush=True,
            )
        del components
        free_device_memory()
    json_path, md_path = write_report(args.out, rows, env, settings)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
