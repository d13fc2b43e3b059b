"""Build tiny random Qwen-Image pipelines offline, saved as diffusers folders.

The tiny models have the real architectures (same classes, same variant flags, same
tokenizer) with a few thousand parameters per layer, so the whole pack can be exercised
on a CPU in seconds.  Nothing here downloads anything: the tokenizer files come from a
local folder (ComfyUI ships the real Qwen2.5 tokenizer in
``comfy/text_encoders/qwen25_tokenizer``).

Usage: ``python -m tools.tiny_models --tokenizer DIR --out MODELS_DIR/diffusers``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Folder names the tests, the demo and the workflows refer to.
TINY_MODELS = {
    "qwenfit-tiny-edit-2509": "edit-2509",
    "qwenfit-tiny-edit-2511": "edit-2511",
    "qwenfit-tiny-layered": "layered",
}
# Bump when the architecture of the tiny models changes, so caches are rebuilt.
BUILD_VERSION = 4
_STAMP = "qwenfit-tiny.json"


def _tokenizer(tokenizer_dir: Path):
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def build_pipeline(variant: str, tokenizer_dir: Path, seed: int = 0):
    """A tiny random pipeline of ``variant`` (edit-2509, edit-2511, layered) from the shipped tiny configs."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        QwenImageEditPlusPipeline,
        QwenImageLayeredPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from optim.qwen.architectures import Architecture, processor, scheduler
    from optim.qwen.variants import Variant

    arch = Architecture("qwenfit-tiny")
    kind = Variant(variant)

    def seeded(make):
        # Each part gets its own seed, so the text encoder and the Edit VAE are the same in every
        # variant and one split text-encoder file fits all three.
        torch.manual_seed(seed)
        return make().eval()

    tokenizer = _tokenizer(tokenizer_dir)
    pipeline_cls = QwenImageLayeredPipeline if kind is Variant.LAYERED else QwenImageEditPlusPipeline
    return pipeline_cls(
        scheduler=scheduler(arch),
        vae=seeded(lambda: AutoencoderKLQwenImage.from_config(arch.vae_config(4 if kind is Variant.LAYERED else 3))),
        text_encoder=seeded(
            lambda: Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**arch.config("text_encoder")))
        ),
        tokenizer=tokenizer,
        processor=processor(arch, tokenizer),
        transformer=seeded(lambda: QwenImageTransformer2DModel.from_config(arch.transformer_config(kind))),
    )


def _is_current(folder: Path) -> bool:
    try:
        stamp = json.loads((folder / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("build_version") == BUILD_VERSION


def ensure_tiny_models(out_dir: Path, tokenizer_dir: Path) -> list[Path]:
    """Build any missing or outdated tiny model folder under ``out_dir``; return all folders.

    Each folder is written to a temporary sibling first and renamed into place, so an
    interrupted build never leaves a half-written model behind.
    """
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    folders = []
    for name, variant in TINY_MODELS.items():
        folder = out_dir / name
        folders.append(folder)
        if _is_current(folder):
            continue
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
        try:
            # In bf16, as the released folders are: the split bf16 files then hold exactly the folder's weights.
            build_pipeline(variant, tokenizer_dir).to(torch.bfloat16).save_pretrained(
                str(staging), safe_serialization=True
            )
            (staging / _STAMP).write_text(json.dumps({"build_version": BUILD_VERSION, "variant": variant}))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokenizer", type=Path, required=True, help="folder with the Qwen2.5 tokenizer (vocab.json, merges.txt)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="models/diffusers folder to write into (split files go beside it)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rebuilt = any(not _is_current(args.out / name) for name in TINY_MODELS)
    folders = ensure_tiny_models(args.out, args.tokenizer)
    for folder in folders:
        print(folder)
    from .comfy_layouts import layouts_current, write_layouts

    models_dir = args.out.parent
    if not layouts_current(models_dir) or rebuilt:
        variants = {TINY_MODELS[f.name]: f for f in folders}
        for path in write_layouts(variants, models_dir):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
