"""QwenFit, then ComfyUI's own nodes that need GPU memory, on an emulated small card, through a real ComfyUI
server: ComfyUI's memory manager must take back what the pack holds, nothing may run out of memory, and the
next QwenFit run must place its weights again and work.

    python bench/memory_handback.py --models /dev/shm/qwenfit-native --card 8 --out handback.json

The workflow is the 8 GB preset's API twin (tests/workflows/qwenfit_edit_8gb.api.json) on the real-size fp8
split files that ``bench/comfy_native.py write`` made, plus ComfyUI's VAELoader, VAEEncode and VAEDecode on
the edited image (a round trip through the native VAE, as a workflow that refines QwenFit's output with native
nodes does) and a SaveImage. It runs twice (a second seed). The server is ``main.py`` started by
``bench/capped_comfy.py`` (the card emulated inside the server), with ComfyUI's default smart memory.

``--native qwen-edit`` (issue 32): one prompt holds the 8 GB preset's Edit, then ComfyUI's own Qwen-Image-Edit
graph on QwenFit's output (``bench.comfy_native.native_graph``: its UNETLoader, CLIPLoader and VAELoader on the
same split files, TextEncodeQwenImageEditPlus, KSampler, VAEDecode), then a second QwenFit Edit node on the same
loader, editing the native output; twice (second seeds). ``--comfy DIR`` picks the server tree (e.g. ComfyUI
0.8.0). Every executed node is measured inside the server (``capped_comfy.py --stage-log``): torch's allocated
and reserved bytes before and after it, ComfyUI's free memory and loaded models, QwenFit's GPU holdings and
releases (bytes given back each time ComfyUI unloaded the pipeline). Writes ``--out`` (JSON) and the Markdown
tables next to it (``.md``). CPU dry run on tiny files: ``--cpu --arch qwenfit-tiny --native qwen-edit``.
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
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # bench.comfy_native (this process is only the server's client)

TWIN = REPO / "tests" / "workflows" / "qwenfit_edit_8gb.api.json"
VAE = "qwen_image_vae.safetensors"
UPSCALER = "qwenfit_tiny_x4.safetensors"


def reference(size: int) -> str:
    return f"qwenfit_reference_{size}.png"  # bench/comfy_native.py reference_name


# Stages of the qwen-edit prompt, by node id: the twin's nodes, the native graph's ("n..."), the second edit's.
SECOND_EDIT, SECOND_SAVE, SECOND_MONITOR, NATIVE_SAVE = "30", "31", "32", "n_save"


def stage_of(node: str | None) -> str:
    if node is None:
        return "between prompts"
    if node.startswith("n"):
        return "2 ComfyUI native"
    if node in (SECOND_EDIT, SECOND_SAVE, SECOND_MONITOR):
        return "3 QwenFit again"
    return "1 QwenFit"


def graph_qwen_edit(steps: int, seed: int, size: int = 1024) -> dict:
    """QwenFit's 8 GB Edit -> ComfyUI's own Qwen-Image-Edit nodes on its output -> QwenFit's Edit again."""
    from bench.comfy_native import native_graph

    nodes = json.loads(TWIN.read_text())
    edit = next(key for key, node in nodes.items() if node["class_type"] == "QwenFitInstructEdit")
    load = next(key for key, node in nodes.items() if node["class_type"] == "LoadImage")
    save = next(key for key, node in nodes.items() if node["class_type"] == "SaveImage")
    monitor = next((key for key, node in nodes.items() if node["class_type"] == "QwenFitVRAMMonitor"), None)
    nodes[load]["inputs"]["image"] = reference(size)
    nodes[edit]["inputs"].update(steps=steps, seed=seed, width=size, height=size)
    nodes[save]["inputs"]["filename_prefix"] = "qwenfit_first"
    native, decoded = native_graph([edit, 0], steps=steps, seed=seed, prefix="n")
    nodes.update(native)
    nodes[NATIVE_SAVE] = {"class_type": "SaveImage", "inputs": {"images": decoded, "filename_prefix": "native"}}
    second = json.loads(json.dumps(nodes[edit]))
    second["inputs"].update(image=decoded, seed=seed + 1000)
    second["_meta"] = {"title": "QwenFit Instruct Edit (again, on the native output)"}
    nodes[SECOND_EDIT] = second
    nodes[SECOND_SAVE] = {
        "class_type": "SaveImage",
        "inputs": {"images": [SECOND_EDIT, 0], "filename_prefix": "qwenfit_again"},
    }
    if monitor is not None:
        nodes[SECOND_MONITOR] = {"class_type": "QwenFitVRAMMonitor", "inputs": {"anything": [SECOND_EDIT, 1]}}
    return nodes


def graph(steps: int, seed: int, size: int = 1024, native: str = "vae") -> dict:
    if native == "qwen-edit":
        return graph_qwen_edit(steps, seed, size)
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


def _cache_for_host(models: Path, card: str, folder: Path, comfy: Path | None = None, launcher_flags: str = "") -> Path:
    """The env.sh ComfyHost reads: this machine's python behind the card-emulating launcher."""
    launcher = folder / "python-capped"
    capped = REPO / "bench" / "capped_comfy.py"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} {capped} --card {card} {launcher_flags} "$@"\n')
    launcher.chmod(0o755)
    comfy = (comfy or Path(os.environ.get("QWENFIT_COMFYUI", REPO / ".cache" / "comfyui"))).resolve()
    (folder / "env.sh").write_text(
        f'QWENFIT_PYTHON="{launcher}"\nQWENFIT_COMFYUI="{comfy}"\nQWENFIT_MODELS="{models.resolve()}"\n'
    )
    return folder


def _system_stats(host) -> dict:
    """ComfyUI's /system_stats: its version and, per device, VRAM free/total and torch's reserved/free-in-pool."""
    try:
        return host.get("/system_stats").json()
    except Exception as error:  # noqa: BLE001 (a measurement; the run goes on)
        return {"error": repr(error)}


def _read_stages(path: Path, done: int) -> list[dict]:
    """The per-node lines the server appended to ``path`` since line ``done``."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()[done:] if line.strip()]


def run(
    models: Path,
    card: str,
    steps: int,
    cpu: bool = False,
    size: int = 1024,
    native: str = "vae",
    comfy: Path | None = None,
    arch: str = "qwen-image",
    seeds: tuple[int, ...] = (42, 43),
) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="qwenfit-handback-"))
    stage_log = scratch / "stages.jsonl"
    flags = f"--stage-log {stage_log}" + (" --tiny" if arch == "qwenfit-tiny" else "")
    if cpu:
        card = "none"  # nothing to emulate without a GPU
    os.environ["QWENFIT_CACHE"] = str(_cache_for_host(models, card, scratch, comfy, flags))
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
    result: dict = {
        "card": card,
        "steps": steps,
        "native": native,
        "comfy": str(host.comfy),
        "arch": arch,
        "cpu": cpu,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": [],
    }
    done = 0
    with host:
        result["system_stats_start"] = _system_stats(host)
        for seed in seeds:
            before = _system_stats(host)
            start = time.perf_counter()
            outcome = host.run(graph(steps, seed, size, native), timeout=900)
            seconds = time.perf_counter() - start
            texts = [t for out in outcome.outputs.values() for t in out.get("text", [])]
            holdings = host.get("/qwenfit/memory").json()["comfy_memory_manager"]
            stages = _read_stages(stage_log, done)
            done += len(stages)
            result["runs"].append(
                {
                    "seed": seed,
                    "status": outcome.status,
                    "error": outcome.error,
                    "seconds": seconds,
                    "files": [f.name for f in outcome.files],
                    "holdings_after": holdings,
                    "report": texts,
                    "system_stats_before": before,
                    "system_stats_after": _system_stats(host),
                    "nodes": stages,
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
                "Requested to load",
                "model weight dtype",
            )
        )
    ][-80:]
    result["log_tail"] = lines[-40:]
    runs = result["runs"]
    # One release per run at least: ComfyUI takes the GPU memory back for its own nodes in every run.
    result["ok"] = (
        all(r["status"] == "success" for r in runs)
        and not result["log_out_of_memory"]
        and runs[-1]["holdings_after"]["release_count"] >= len(seeds)
        and any("placed again" in t for t in " ".join(runs[-1]["report"]).splitlines())
    )
    if cpu:  # no GPU: nothing is held on one, so there is nothing to give back; the wiring is what is checked
        result["ok_wiring"] = all(r["status"] == "success" for r in runs) and not result["log_out_of_memory"]
    return result


# ---- tables -----------------------------------------------------------------------------------------------


def _gib(value) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def _pair(before: dict, after: dict, key: str) -> str:
    return f"{_gib(before.get(key))} -> {_gib(after.get(key))}"


def _models(snapshot: dict) -> str:
    names = [
        f"{m['model']} {_gib(m.get('loaded_bytes'))}/{_gib(m.get('size_bytes'))}"
        for m in snapshot.get("comfy_loaded_models", [])
    ]
    return ", ".join(names) or "none"


def _device(stats: dict) -> dict:
    devices = stats.get("devices") or [{}]
    return devices[0]


def tables(result: dict) -> str:
    """Markdown: the runs, each stage's memory (first node's before, last node's after), every node."""
    start = result.get("system_stats_start", {})
    system = start.get("system", {})
    device = _device(start)
    out = [
        f"ComfyUI {system.get('comfyui_version', '?')} ({result.get('comfy')}), torch {system.get('pytorch_version', '?')}, "
        f"device {device.get('name', '?')}; card {result['card']} (ComfyUI sees {_gib(device.get('vram_total'))} GiB); "
        f"native nodes: {result['native']}; {result['steps']} steps; ok: {result['ok']}"
        + (f"; wiring ok (CPU): {result['ok_wiring']}" if "ok_wiring" in result else ""),
        f"out-of-memory lines in the server log: {len(result['log_out_of_memory'])}",
        "",
        "| run (seed) | status | s | QwenFit releases so far | bytes given back (GiB, node) | QwenFit GPU GiB after "
        "| ComfyUI free GiB before -> after | torch reserved GiB before -> after | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        held = r["holdings_after"]
        releases = ", ".join(f"{_gib(x['bytes'])} ({x.get('node')})" for x in held.get("releases", [])) or "none"
        b, a = _device(r["system_stats_before"]), _device(r["system_stats_after"])
        error = json.dumps(r["error"])[:200].replace("|", "/") if r["error"] else ""
        out.append(
            f"| {r['seed']} | {r['status']} | {r['seconds']:.1f} | {held.get('release_count')} | {releases} "
            f"| {_gib(held.get('gpu_bytes'))} | {_gib(b.get('vram_free'))} -> {_gib(a.get('vram_free'))} "
            f"| {_gib(b.get('torch_vram_total'))} -> {_gib(a.get('torch_vram_total'))} | {error} |"
        )
    out += [
        "",
        "Per stage (before = its first executed node's start, after = its last node's end; a stage's loaders may run "
        "before another stage's nodes):",
        "",
        "| run | stage | nodes run | s | torch allocated GiB | torch reserved GiB | peak allocated GiB "
        "| ComfyUI free GiB | QwenFit GPU GiB | QwenFit releases in stage (GiB) | ComfyUI's loaded models after "
        "(loaded/size GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        stages: dict[str, list[dict]] = {}
        for node in r["nodes"]:
            stages.setdefault(stage_of(node["node"]), []).append(node)
        for name in sorted(stages):
            nodes = stages[name]
            first, last = nodes[0]["before"], nodes[-1]["after"]
            ran = [n for n in nodes if not n.get("cached")]
            peaks = [n["after"].get("torch_peak_allocated_bytes") for n in ran]
            peak = max((x for x in peaks if x is not None), default=None)
            q0, q1 = first.get("qwenfit", {}), last.get("qwenfit", {})
            gone = [x for x in q1.get("releases", []) if x not in q0.get("releases", [])]
            out.append(
                f"| {r['seed']} | {name} | {len(ran)} | {sum(n.get('seconds', 0) for n in nodes):.1f} "
                f"| {_pair(first, last, 'torch_allocated_bytes')} | {_pair(first, last, 'torch_reserved_bytes')} "
                f"| {_gib(peak)} | {_pair(first, last, 'comfy_free_bytes')} "
                f"| {_gib(q0.get('gpu_bytes'))} -> {_gib(q1.get('gpu_bytes'))} "
                f"| {', '.join(_gib(x['bytes']) for x in gone) or 'none'} | {_models(last)} |"
            )
    out += [
        "",
        "Every executed node:",
        "",
        "| run | stage | node | class | cached | s | torch allocated GiB | torch reserved GiB | peak allocated GiB "
        "| QwenFit GPU GiB | ComfyUI's loaded models after | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        for n in r["nodes"]:
            b, a = n["before"], n["after"]
            out.append(
                f"| {r['seed']} | {stage_of(n['node'])} | {n['node']} | {n['class_type']} | {n.get('cached')} "
                f"| {n.get('seconds', 0):.2f} | {_pair(b, a, 'torch_allocated_bytes')} "
                f"| {_pair(b, a, 'torch_reserved_bytes')} | {_gib(a.get('torch_peak_allocated_bytes'))} "
                f"| {_gib(b.get('qwenfit', {}).get('gpu_bytes'))} -> {_gib(a.get('qwenfit', {}).get('gpu_bytes'))} "
                f"| {_models(a)} | {n.get('result', '')} {n.get('error', '')[:120]} |"
            )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--card", default="8")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cpu", action="store_true", help="a dry run on tiny files (no card emulated)")
    parser.add_argument(
        "--native", choices=("vae", "upscale", "qwen-edit"), default="vae", help="the native nodes after QwenFit"
    )
    parser.add_argument("--comfy", type=Path, help="the ComfyUI tree whose main.py runs (default .cache/comfyui)")
    parser.add_argument("--arch", default="qwen-image", help="qwenfit-tiny: the files are tiny (CPU dry run)")
    parser.add_argument("--runs", type=int, default=2, help="prompts, one seed each (42, 43, ...)")
    parser.add_argument("--out", type=Path, help="the JSON; the Markdown tables go next to it (.md)")
    args = parser.parse_args()
    seeds = tuple(42 + i for i in range(args.runs))
    result = run(args.models, args.card, args.steps, args.cpu, args.size, args.native, args.comfy, args.arch, seeds)
    text = json.dumps(result, indent=1, default=str)
    table = tables(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".md").write_text(table + "\n")
    print(json.dumps({k: result.get(k) for k in ("ok", "ok_wiring", "log_out_of_memory")}), flush=True)
    for r in result["runs"]:
        print(r["seed"], r["status"], f"{r['seconds']:.1f}s", r["holdings_after"], str(r["error"])[:400], flush=True)
    print(table, flush=True)
    return 0 if result["ok"] or result.get("ok_wiring") else 1


if __name__ == "__main__":
    raise SystemExit(main())
