"""Switching between two model selections in one process: the first is freed before the second allocates.

    python bench/model_switch.py --models DIR [--card 24] --out FILE.json

Loads A, B, A through one ``PipelineCache`` (the node pack's) on the real-size split files that
``bench/comfy_native.py write`` left in DIR: A the scaled fp8 transformer file, B the plain e4m3fn one
(the same sizes; a real-size Layered file set is not written by the benchmark). Each selection runs one
Edit 1024 job; while the next loads, the previous ``LoadedPipeline`` is still referenced, as ComfyUI's
output cache does. Per phase: host RSS peak (VmHWM, reset before the phase through /proc/self/clear_refs)
and GPU ``max_memory_reserved``; the first phase is A alone, the yardstick for the switches.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.comfy_native import CARDS, GIB, LAYOUTS, PROMPT, REPO, TEXT_ENCODER, VAE, _host_rss_peak


def _reset_rss_peak() -> bool:
    """Reset VmHWM (5: the peak resident set size); False where the kernel does not allow it, and the peaks
    are then since the process started (a stricter yardstick for the switches)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--card", default="24", choices=list(CARDS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", help="cpu: a check on tiny files (the figures mean nothing)")
    a = parser.parse_args(argv)
    import torch

    from bench.jobs import synthetic_image
    from optim import EditJob, LoadRequest, OffloadSettings, PipelineCache, SplitFiles, run_edit
    from optim.loading.library_imports import import_libraries

    import_libraries()
    card = {"8": "8 GB", "24": "24 GB", "none": "unlimited"}[a.card]
    cuda = a.device == "cuda"
    if cuda and CARDS[a.card] is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(CARDS[a.card][1] * GIB / total)
    tokenizer = REPO / ".cache" / "comfyui" / "comfy" / "text_encoders" / "qwen25_tokenizer"
    offload = OffloadSettings(vram_budget=card, mode="none" if a.card == "none" else "auto")

    def request(layout: str) -> LoadRequest:
        files = SplitFiles(a.models / LAYOUTS[layout], a.models / TEXT_ENCODER, a.models / VAE, tokenizer)
        return LoadRequest(files, offload=offload, device=a.device)

    cache, held, phases = PipelineCache(), [], []
    size = 1024 if cuda else 64
    image = synthetic_image(size, "RGB")
    job = EditJob(PROMPT, negative_prompt="", true_cfg_scale=4.0, steps=a.steps, seed=0, width=size, height=size)
    for name, layout in (("A alone", "scaled"), ("A -> B", "e4m3fn"), ("B -> A", "scaled")):
        reset = _reset_rss_peak()
        print(f"{name}: host MemAvailable {_mem_available() / GIB:.1f} GiB before", flush=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        held.append(cache.get(request(layout)))
        loaded_at = time.perf_counter() - start
        run_edit(held[-1], [image], job)
        phases.append(
            {
                "phase": name,
                "host_peak_since": "phase start" if reset else "process start",
                "load_seconds": loaded_at,
                "load_and_image_seconds": time.perf_counter() - start,
                "host_rss_peak_bytes": _host_rss_peak(),
                "gpu_peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else 1,
            }
        )
    alone = phases[0]
    for phase in phases[1:]:
        phase["host_vs_alone"] = phase["host_rss_peak_bytes"] / alone["host_rss_peak_bytes"]
        phase["gpu_vs_alone"] = phase["gpu_peak_reserved_bytes"] / alone["gpu_peak_reserved_bytes"]
    result = {"card": a.card, "steps": a.steps, "loads": cache.loads, "phases": phases}
    a.out.write_text(json.dumps(result, indent=1))
    for p in phases:
        print(
            f"{p['phase']:8s} load {p['load_seconds']:5.1f} s  host peak {p['host_rss_peak_bytes'] / GIB:5.1f} GiB"
            f"  GPU peak {p['gpu_peak_reserved_bytes'] / GIB:5.1f} GiB"
            + (f"  x{p['host_vs_alone']:.3f} host, x{p['gpu_vs_alone']:.3f} GPU" if "host_vs_alone" in p else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
