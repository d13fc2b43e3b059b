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
BUILD_VERSION = 1
_STAMP = "qwenfit-tiny.json"

TEXT_HIDDEN = 16


def _tokenizer(tokenizer_dir: Path):
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def _processor(tokenizer):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    # A small pixel budget keeps the tiny vision tower cheap; the pipeline resizes
    # condition images to ~384x384 first, the processor then shrinks them further.
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    image_processor = Qwen2VLImageProcessor(**pixels)
    video_processor = Qwen2VLVideoProcessor(**pixels)
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor)


def _text_encoder(vocab_size: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "vocab_size": vocab_size,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]},
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
            "fullatt_block_indexes": [1],
            "window_size": 112,
        },
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _vae(rgba: bool):
    from diffusers import AutoencoderKLQwenImage

    # base_dim 8 keeps it tiny; three downsamples keep the real 8x spatial scale and
    # z_dim 16 keeps the real latent width (never z_dim 4 with RGBA: the pipeline would
    # then mistake a 4-channel image for latents).
    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        input_channels=4 if rgba else 3,
    ).eval()


def _transformer(variant: str):
    from diffusers import QwenImageTransformer2DModel

    flags = {
        "edit-2509": {},
        "edit-2511": {"zero_cond_t": True},
        "layered": {"use_layer3d_rope": True, "use_additional_t_cond": True},
    }[variant]
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        axes_dims_rope=(4, 6, 6),
        **flags,
    ).eval()


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # The real Qwen-Image scheduler settings (dynamic shifting, exponential).
    return FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        num_train_timesteps=1000,
        shift=1.0,
        shift_terminal=0.02,
        stochastic_sampling=False,
        time_shift_type="exponential",
        use_beta_sigmas=False,
        use_dynamic_shifting=True,
        use_exponential_sigmas=False,
        use_karras_sigmas=False,
    )


def build_pipeline(variant: str, tokenizer_dir: Path, seed: int = 0):
    """Return a tiny random pipeline of the given variant (edit-2509, edit-2511, layered)."""
    import torch
    from diffusers import QwenImageEditPlusPipeline, QwenImageLayeredPipeline

    torch.manual_seed(seed)
    tokenizer = _tokenizer(tokenizer_dir)
    pipeline_cls = QwenImageLayeredPipeline if variant == "layered" else QwenImageEditPlusPipeline
    return pipeline_cls(
        scheduler=_scheduler(),
        vae=_vae(rgba=variant == "layered"),
        text_encoder=_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        processor=_processor(tokenizer),
        transformer=_transformer(variant),
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
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = []
    for name, variant in TINY_MODELS.items():
        folder = out_dir / name
        folders.append(folder)
        if _is_current(folder):
            continue
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
        try:
            build_pipeline(variant, tokenizer_dir).save_pretrained(str(staging), safe_serialization=True)
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
    parser.add_argument("--out", type=Path, required=True, help="models/diffusers folder to write into")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for folder in ensure_tiny_models(args.out, args.tokenizer):
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
