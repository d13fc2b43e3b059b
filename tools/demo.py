"""The main job: run a bundled preset through a real ComfyUI with the pack, save the outputs.

    python -m tools.demo [--preset qwenfit_edit_auto] [--models DIR] [--out DIR]

With ``--models`` (or QWENFIT_MODELS_DIR) naming a ComfyUI models folder that holds the
preset's files (``diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors``,
``text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors``, ``vae/qwen_image_vae.safetensors``),
the real weights run, on the GPU when there is one. Otherwise the embedded tiny models run on the CPU (random weights: the
images are noise; the point is the whole path). Prints the folder the outputs went to.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from comfy_host import MODEL_KINDS, ComfyHost  # noqa: E402

from .presets import API_DIR, INPUT_IMAGES, PRESETS, TINY_STAND_INS, on_tiny_models  # noqa: E402

# The loader's file inputs and the models folder each one names a file of.
_FILE_FOLDERS = {"model": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae"}


def _has_real_models(models_dir: Path | None, api: dict) -> bool:
    """True when the user's models folder holds every file the preset's loaders name (transformer, text
    encoder and VAE; ``auto`` and a diffusers folder bring their own)."""
    if models_dir is None:
        return False
    loaders = [n["inputs"] for n in api.values() if n["class_type"] == "QwenFitOptimizedLoader"]

    def present(slot: str, name: str) -> bool:
        if name == "auto":
            return True
        return (models_dir / _FILE_FOLDERS[slot] / name).is_file() or (
            slot == "model" and (models_dir / "diffusers" / name / "model_index.json").is_file()
        )

    return bool(loaders) and all(
        present(slot, inputs[slot]) for inputs in loaders for slot in _FILE_FOLDERS if slot in inputs
    )


def _link_user_models(models_dir: Path, base: Path) -> None:
    """Make the user's model files visible to the demo's ComfyUI (links, nothing copied)."""
    for kind in MODEL_KINDS:
        source = models_dir / kind
        for entry in sorted(source.iterdir()) if source.is_dir() else []:
            target = base / "models" / kind / entry.name
            if not target.exists():
                target.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a QwenFit preset through ComfyUI.")
    parser.add_argument("--preset", default="qwenfit_edit_auto", choices=[p.name for p in PRESETS])
    parser.add_argument(
        "--models",
        type=Path,
        default=os.environ.get("QWENFIT_MODELS_DIR") or None,
        help="a ComfyUI models folder with real weights (default: the tiny models)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "out")
    args = parser.parse_args(argv)

    api = json.loads((API_DIR / f"{args.preset}.api.json").read_text())
    real = _has_real_models(args.models, api)
    if real:
        print(f"[demo] real weights from {args.models}")
    else:
        print(
            f"[demo] no real weights configured: running the embedded tiny models "
            f"({', '.join(TINY_STAND_INS.values())}) on the CPU"
        )
        api = on_tiny_models(api)

    base = Path(tempfile.mkdtemp(prefix="qwenfit-demo-"))
    use_gpu = bool(real) and _cuda_available()
    host = ComfyHost(base, cpu=not use_gpu)
    host.prepare()
    if real:
        _link_user_models(args.models, base)
    for name in INPUT_IMAGES:
        host.add_input(REPO / "example_workflows" / "inputs" / name)
    started = time.perf_counter()
    with host:
        print(f"[demo] ComfyUI {host.url} running {args.preset} ...", flush=True)
        result = host.run(api, timeout=3600)
    out = args.out / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(host.log_path, out / "server.log")
    if result.status != "success":
        print(f"[demo] the prompt ended with {result.status}: {result.error_text()}\n[demo] log: {out / 'server.log'}")
        return 1
    for path in result.files:
        shutil.copyfile(path, out / path.name)
    for node in result.outputs.values():
        for text in node.get("text", []):
            (out / "report.txt").write_text(text)
    shutil.rmtree(base, ignore_errors=True)
    print(f"[demo] {len(result.files)} image(s) in {time.perf_counter() - started:.0f} s")
    print(f"[demo] outputs: {out}")
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
