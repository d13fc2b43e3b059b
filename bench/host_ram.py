"""Host RAM of the 8 GB preset loading ComfyUI's fp8 files, measured in a fresh process.

    python bench/host_ram.py write --tokenizer DIR --models DIR
        real-size random weights (the benchmark's seeds) written as ComfyUI's split files:
        diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors (scaled fp8 blocks),
        text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors (scaled fp8 language layers),
        vae/qwen_image_vae.safetensors (bf16)
    python bench/host_ram.py run --tokenizer DIR --models DIR --host-budget "24 GB" --out FILE.json

``run`` loads those files through the pack's loader (OffloadSettings: VRAM budget 8 GB, the given host
budget), runs the Edit job twice (a new prompt, then the same prompt with a new seed) and records, for
the whole process: peak RSS (VmHWM, load included), the page-locked bytes (ordinary memory registered
with the driver, so already part of RSS), the drop of the system's MemAvailable (anything the driver
allocates on our behalf included), s/step, phase seconds and peak VRAM. Each budget runs in its own
process so no measurement inherits another's memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

GIB = 1024**3
TRANSFORMER = "diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors"
TEXT_ENCODER = "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors"
VAE = "vae/qwen_image_vae.safetensors"


def write(tokenizer: Path, models: Path, arch: str = "qwen-image", device: str = "cuda") -> dict:
    """Build the Edit-2509 components (real size by default) on ``device`` and write them as
    ComfyUI's fp8 files."""
    import torch
    from safetensors.torch import save_file

    from bench.realsize import build_components
    from optim.files.fp8_layouts import quantize_absmax
    from optim.files.key_maps import text_encoder_to_comfy
    from tools.comfy_layouts import _comfy_vae

    start = time.perf_counter()
    parts = build_components(arch, "edit-2509", device, torch.bfloat16, tokenizer)

    def fp8_file(module, quantize, rename, path: Path, extra: dict) -> None:
        tensors = dict(extra)
        with torch.no_grad():
            for key, value in module.state_dict().items():
                name = rename(key)
                if quantize(key) and value.ndim == 2:
                    data, scale = quantize_absmax(value)
                    tensors[name] = data.cpu()
                    tensors[name.removesuffix(".weight") + ".scale_weight"] = scale.cpu()
                else:
                    tensors[name] = value.to("cpu", copy=True).contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))

    marker = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    fp8_file(
        parts["transformer"],
        lambda k: k.startswith("transformer_blocks.") and k.endswith(".weight") and "norm" not in k,
        lambda k: "model.diffusion_model." + k,
        models / TRANSFORMER,
        {"model.diffusion_model.scaled_fp8": marker["scaled_fp8"]},
    )
    del parts["transformer"]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    fp8_file(
        parts["text_encoder"],
        lambda k: k.startswith("model.language_model.layers.") and k.endswith(".weight") and "norm" not in k,
        text_encoder_to_comfy,
        models / TEXT_ENCODER,
        marker,
    )
    vae = parts["vae"]
    state = {k: v.to("cpu", copy=True).contiguous() for k, v in vae.state_dict().items()}
    comfy_vae = _comfy_vae(state, vae.config.num_res_blocks, len(vae.config.dim_mult))
    (models / VAE).parent.mkdir(parents=True, exist_ok=True)
    save_file(comfy_vae, str(models / VAE))
    sizes = {name: (models / name).stat().st_size for name in (TRANSFORMER, TEXT_ENCODER, VAE)}
    return {"seconds": time.perf_counter() - start, "file_bytes": sizes}


class AvailableLow:
    """The lowest MemAvailable seen, sampled every 20 ms on a thread."""

    def __init__(self) -> None:
        self.start = psutil.virtual_memory().available
        self.low = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.low = min(self.low, psutil.virtual_memory().available)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.start - self.low


def run(tokenizer: Path, models: Path, host_budget: str, vram_budget: str, steps: int, device: str = "cuda") -> dict:
    """Load the fp8 files with the pack's loader and run the Edit job twice; memory and times."""
    available = AvailableLow()
    import torch

    from bench.jobs import synthetic_image
    from bench.measure import host_rss
    from optim import EditJob, LoadRequest, OffloadSettings, SplitFiles, load_pipeline, run_edit
    from optim.execution.host_arena import pinned_bytes

    source = SplitFiles(models / TRANSFORMER, models / TEXT_ENCODER, models / VAE, tokenizer)
    offload = OffloadSettings(vram_budget=vram_budget, host_budget=host_budget)
    start = time.perf_counter()
    loaded = load_pipeline(LoadRequest(source, offload=offload, device=device))
    cuda = device == "cuda"
    load_seconds = time.perf_counter() - start
    after_load = {"rss_peak": host_rss()[0], "rss": host_rss()[1], "pinned": pinned_bytes()}
    image = synthetic_image(1024, "RGB")
    runs = []
    for seed in (0, 1):  # the second run reuses the prompt embeddings: nothing is read from the text files
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        job = EditJob(prompt="make the sky purple", steps=steps, seed=seed, width=1024, height=1024)
        result = run_edit(loaded, [image], job)
        record = result.record
        denoise = next(p for p in record.phases if p.name == "denoise")
        runs.append(
            {
                "seed": seed,
                "seconds": result.seconds,
                "phases": {p.name: {"seconds": p.seconds, "peak_reserved": p.peak_reserved} for p in record.phases},
                "seconds_per_step": denoise.seconds / steps,  # first step included
                "peak_reserved": record.peak_reserved,
                "predicted_peak": record.predicted_peak,
                "finite": bool(torch.isfinite(result.image).all()),
            }
        )
    peak_rss, rss = host_rss()
    return {
        "host_budget": host_budget,
        "vram_budget": vram_budget,
        "gpu": torch.cuda.get_device_name() if cuda else "cpu",
        "text_encoder": loaded.host.text_encoder,
        "modulation": loaded.host.modulation,
        "load_seconds": load_seconds,
        "after_load": after_load,
        "rss_peak": peak_rss,
        "rss_after": rss,
        "pinned": pinned_bytes(),
        "available_drop": available.stop(),
        "plan": loaded.engine.plan.describe() if loaded.engine.plan else loaded.describe_default_plan(),
        "runs": runs,
    }


def table(results: list[dict]) -> str:
    """A Markdown table of ``run`` results."""
    lines = [
        "| host budget | text encoder / modulation | peak RSS GiB | page-locked GiB (inside RSS) "
        "| MemAvailable drop GiB | load s | 1st run s (encode s) | 2nd run s (encode s) | s/step | peak VRAM GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        first, second = r["runs"]
        lines.append(
            f"| {r['host_budget']} | {r['text_encoder']} / {r['modulation']} | {r['rss_peak'] / GIB:.2f} | {r['pinned'] / GIB:.2f} "
            f"| {r['available_drop'] / GIB:.2f} | {r['load_seconds']:.1f} "
            f"| {first['seconds']:.1f} ({first['phases']['encode']['seconds']:.1f}) "
            f"| {second['seconds']:.1f} ({second['phases']['encode']['seconds']:.1f}) "
            f"| {second['seconds_per_step']:.3f} | {max(first['peak_reserved'], second['peak_reserved']) / GIB:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("write", "run", "table"))
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--models", type=Path)
    parser.add_argument("--host-budget", default="24 GB")
    parser.add_argument("--vram-budget", default="8 GB")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--arch", default="qwen-image", help="qwenfit-tiny for a quick check on the CPU")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path)
    parser.add_argument("results", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if args.command == "write":
        result = write(args.tokenizer, args.models, args.arch, args.device)
    elif args.command == "run":
        result = run(args.tokenizer, args.models, args.host_budget, args.vram_budget, args.steps, args.device)
    else:
        print(table([json.loads(p.read_text()) for p in args.results]))
        return 0
    from bench.report import print_and_write

    print_and_write(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
