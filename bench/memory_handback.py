"""QwenFit, then ComfyUI's own nodes that need GPU memory, on an emulated small card, through a real ComfyUI
server: ComfyUI's memory manager must take back what the pack holds, nothing may run out of memory, and the
next QwenFit run must place its weights again and work.

    python bench/memory_handback.py --models /dev/shm/qwenfit-native --card 8 --out handback.json

The workflow is the 8 GB preset's API twin (tests/workflows/qwenfit_edit_8gb.api.json) on the real-size fp8
split files that ``bench/comfy_native.py write`` made, plus ComfyUI's VAELoader, VAEEncode and VAEDecode on
the edited image (a round trip through the native VAE, as a workflow that refines QwenFit's output with native
nodes does) and a SaveImage. It runs twice (a second seed). The server is ``main.py`` started by
``bench/capped_comfy.py`` (the card emulated inside the server), with ComfyUI's default smart memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

TWIN = REPO / "tests" / "workflows" / "qwenfit_edit_8gb.api.json"
VAE = "qwen_image_vae.safetensors"
UPSCALER = "qwenfit_tiny_x4.safetensors"


def reference(size: int) -> str:
    return f"qwenfit_reference_{size}.png"  # bench/comfy_native.py reference_name


def graph(steps: int, seed: int, size: int = 1024, native: str = "vae") -> dict:
    nodes = json.loads(TWIN.read_text())
    edit = next(key for key, node in nodes.items() if node["class_type"] == "QwenFitInstructEdit")
    load = next(key for key, node in nodes.items() if node["class_type"] == "LoadImage")
    nodes[load]["inputs"]["image"] = reference(size)
    nodes[edit]["inputs"].update(steps=steps, seed=seed, width=size, height=size)
    if native == "upscale":  # the dry run's: ComfyUI cannot load the tiny VAE file
        nodes["20"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": UPSCALER}}
        nodes["22"] = {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["20", 0], "image": [edit, 0]},
        }
    else:
        nodes["20"] = {"class_type": "VAELoader", "inputs": {"vae_name": VAE}}
        nodes["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": [edit, 0], "vae": ["20", 0]}}
        nodes["22"] = {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["20", 0]}}
    nodes["23"] = {"class_type": "SaveImage", "inputs": {"images": ["22", 0], "filename_prefix": "native"}}
    return nodes


def _tiny_upscaler(path: Path) -> None:
    """A 4x upscale model of spandrel's Compact architecture (2k parameters), random weights."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(Compact(num_feat=4, num_conv=1, upscale=4).state_dict(), str(path))


def _cache_for_host(models: Path, card: str, folder: Path) -> Path:
    """The env.sh ComfyHost reads: this machine's python behind the card-emulating launcher."""
    launcher = folder / "python-capped"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} {REPO / "bench" / "capped_comfy.py"} --card {card} "$@"\n')
    launcher.chmod(0o755)
    comfy = Path(os.environ.get("QWENFIT_COMFYUI", REPO / ".cache" / "comfyui")).resolve()
    (folder / "env.sh").write_text(
        f'QWENFIT_PYTHON="{launcher}"\nQWENFIT_COMFYUI="{comfy}"\nQWENFIT_MODELS="{models.resolve()}"\n'
    )
    return folder


def run(models: Path, card: str, steps: int, cpu: bool = False, size: int = 1024, native: str = "vae") -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="qwenfit-handback-"))
    os.environ["QWENFIT_CACHE"] = str(_cache_for_host(models, card, scratch))
    from comfy_host import ComfyHost

    web = scratch / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>no frontend</title>")
    # On the CPU nothing is short of memory: ComfyUI's --disable-smart-memory makes it unload for each node.
    extra = ("--disable-smart-memory",) if cpu else ()
    host = ComfyHost(scratch / "base", cpu=cpu, front_end=str(web), extra_args=extra)
    host.prepare()
    if native == "upscale":
        _tiny_upscaler(scratch / "base" / "models" / "upscale_models" / UPSCALER)
    host.add_input(models / "input" / reference(size))
    result: dict = {"card": card, "steps": steps, "runs": []}
    with host:
        for seed in (42, 43):
            start = time.perf_counter()
            outcome = host.run(graph(steps, seed, size, native), timeout=900)
            texts = [t for out in outcome.outputs.values() for t in out.get("text", [])]
            holdings = host.get("/qwenfit/memory").json()["comfy_memory_manager"]
            result["runs"].append(
                {
                    "seed": seed,
                    "status": outcome.status,
                    "error": outcome.error,
                    "seconds": time.perf_counter() - start,
                    "files": [f.name for f in outcome.files],
                    "holdings_after": holdings,
                    "report": texts,
                }
            )
        log = host.log()
    lines = log.splitlines()
    result["log_out_of_memory"] = [line for line in lines if "out of memory" in line.lower() or "OOM" in line]
    result["log_memory_manager"] = [
        line
        for line in lines
        if any(
            word in line
            for word in (
                "capped_comfy",
                "loaded completely",
                "loaded partially",
                "Unload",
                "unload",
                "Total VRAM",
                "QwenFit",
            )
        )
    ][-60:]
    runs = result["runs"]
    result["ok"] = (
        all(r["status"] == "success" for r in runs)
        and not result["log_out_of_memory"]
        and runs[-1]["holdings_after"]["release_count"] >= 2
        and any("placed again" in t for t in " ".join(runs[-1]["report"]).splitlines())
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--card", default="8")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cpu", action="store_true", help="a dry run on tiny files (no card emulated)")
    parser.add_argument("--native", choices=("vae", "upscale"), default="vae", help="the native nodes after QwenFit")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.models, args.card, args.steps, args.cpu, args.size, args.native)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.write_text(text)
    print(json.dumps({k: result[k] for k in ("ok", "log_out_of_memory")}), flush=True)
    for r in result["runs"]:
        print(r["seed"], r["status"], f"{r['seconds']:.1f}s", r["holdings_after"], str(r["error"])[:400], flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
