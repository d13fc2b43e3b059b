"""Names and paths of the tiny models in each layout (written by tools/tiny_models.py)."""

from __future__ import annotations

from pathlib import Path

from comfy_host import read_env

MODELS = Path(read_env()["QWENFIT_MODELS"])
TOKENIZER = Path(read_env()["QWENFIT_COMFYUI"]) / "comfy" / "text_encoders" / "qwen25_tokenizer"

FOLDER = {
    "edit-2509": "qwenfit-tiny-edit-2509",
    "edit-2511": "qwenfit-tiny-edit-2511",
    "layered": "qwenfit-tiny-layered",
}
TE_BF16 = "qwenfit_tiny_qwen_2.5_vl.safetensors"
TE_FP8 = "qwenfit_tiny_qwen_2.5_vl_fp8_scaled.safetensors"
VAE = {
    "edit-2509": "qwenfit_tiny_qwen_image_vae.safetensors",
    "edit-2511": "qwenfit_tiny_qwen_image_vae.safetensors",
    "layered": "qwenfit_tiny_qwen_image_layered_vae.safetensors",
}
# (transformer file, variant, text encoder, fp8?) for every layout written.
LAYOUTS = [
    ("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509", TE_BF16, False),
    ("qwenfit_tiny_edit_2509_fp8_e4m3fn.safetensors", "edit-2509", TE_FP8, True),
    ("qwenfit_tiny_edit_2511_bf16.safetensors", "edit-2511", TE_BF16, False),
    ("qwenfit_tiny_edit_2511_fp8mixed.safetensors", "edit-2511", TE_BF16, True),
    ("qwenfit_tiny_layered_bf16.safetensors", "layered", TE_BF16, False),
    ("qwenfit_tiny_layered_fp8mixed.safetensors", "layered", TE_BF16, True),
]


def split_files(transformer: str, variant: str, text_encoder: str = TE_BF16, vae: str | None = None):
    from optim import SplitFiles

    return SplitFiles(
        MODELS / "diffusion_models" / transformer,
        MODELS / "text_encoders" / text_encoder,
        MODELS / "vae" / (vae or VAE[variant]),
        TOKENIZER,
    )
