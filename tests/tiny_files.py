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

# ComfyUI-GGUF's transformer files, as tools/gguf_files.py writes them: (file, variant).
GGUF_FILES = [
    *((f"qwenfit_tiny_edit_2509_{t}.gguf", "edit-2509") for t in (
        "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K", "BF16", "F16")),
    ("qwenfit_tiny_edit_2511_Q4_K_M.gguf", "edit-2511"),
    ("qwenfit_tiny_edit_2511_every_type.gguf", "edit-2511"),
    ("qwenfit_tiny_layered_Q8_0.gguf", "layered"),
    ("qwenfit_tiny_layered_every_type.gguf", "layered"),
    *((f"qwenfit_tiny_{v}_{t}.gguf", v.replace("_", "-")) for v in ("edit_2511", "layered") for t in (
        "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")),
]  # fmt: skip

# Comfy-Org's quantized safetensors files, as tools/comfy_quant_files.py writes them: (file, variant, format).
COMFY_QUANT_FILES = [
    ("qwenfit_tiny_edit_2509_int8_convrot.safetensors", "edit-2509", "int8 convrot"),
    ("qwenfit_tiny_edit_2509_int8.safetensors", "edit-2509", "int8 tensorwise"),
    ("qwenfit_tiny_edit_2509_mxfp8.safetensors", "edit-2509", "mxfp8"),
    ("qwenfit_tiny_edit_2509_nvfp4.safetensors", "edit-2509", "nvfp4"),
    ("qwenfit_tiny_edit_2511_int8_convrot.safetensors", "edit-2511", "int8 convrot"),
    ("qwenfit_tiny_edit_2511_mxfp8.safetensors", "edit-2511", "mxfp8"),
    ("qwenfit_tiny_edit_2511_nvfp4.safetensors", "edit-2511", "nvfp4"),
    ("qwenfit_tiny_layered_int8_convrot.safetensors", "layered", "int8 convrot"),
    ("qwenfit_tiny_layered_mxfp8.safetensors", "layered", "mxfp8"),
    ("qwenfit_tiny_layered_nvfp4.safetensors", "layered", "nvfp4"),
]


def split_files(transformer: str, variant: str, text_encoder: str = TE_BF16, vae: str | None = None):
    from optim import SplitFiles

    return SplitFiles(
        MODELS / "diffusion_models" / transformer,
        MODELS / "text_encoders" / text_encoder,
        MODELS / "vae" / (vae or VAE[variant]),
        TOKENIZER,
    )


# ---- LoRA files in every key style the pack reads (random, deterministic, written on demand) -------

LORA_STYLES = ("kohya", "peft", "comfy", "lightx2v")


def layer_shapes(transformer_file: Path) -> dict[str, tuple[int, int]]:
    """(out, in) of every 2-D weight of a transformer file, by module name (from its header)."""
    from optim.files.safetensors_file import SafetensorsFile

    file = SafetensorsFile(transformer_file)
    return {
        k[: -len(".weight")]: file.shape(k) for k in file.keys() if k.endswith(".weight") and len(file.shape(k)) == 2
    }


def lora_keys(style: str, layer: str) -> tuple[str, str, str]:
    """(down key, up key, alpha key) of ``layer`` in ``style``."""
    if style == "kohya":
        stem = "lora_unet_" + layer.replace(".", "_")
        return f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"
    if style == "peft":
        return f"transformer.{layer}.lora_A.weight", f"transformer.{layer}.lora_B.weight", f"transformer.{layer}.alpha"
    if style == "comfy":
        stem = f"diffusion_model.{layer}"
        return f"{stem}.lora_A.weight", f"{stem}.lora_B.weight", f"{stem}.alpha"
    if style == "lightx2v":  # bare module names, as lightx2v's Lightning files have them
        return f"{layer}.lora_down.weight", f"{layer}.lora_up.weight", f"{layer}.alpha"
    raise ValueError(f"unknown LoRA style {style!r}")


def write_lora(
    path: Path,
    style: str,
    shapes: dict[str, tuple[int, int]],
    rank: int,
    alpha: float | None,
    seed: int,
    size: float = 0.1,
    dtype=None,
) -> dict[str, tuple]:
    """A random LoRA on the layers of ``shapes`` in ``style``, saved at ``path`` (PEFT style stores no alpha:
    ``alpha`` must be None there, as PEFT keeps it in adapter_config.json). Returns {layer: (down, up,
    alpha / rank)} in float32, for merging by hand."""
    import torch
    from safetensors.torch import save_file

    dtype = dtype or (torch.bfloat16 if style == "lightx2v" else torch.float32)
    generator = torch.Generator().manual_seed(seed)
    tensors, factors = {}, {}
    for layer, (out_features, in_features) in sorted(shapes.items()):
        down = (torch.randn(rank, in_features, generator=generator) * size).to(dtype)
        up = (torch.randn(out_features, rank, generator=generator) * size).to(dtype)
        down_key, up_key, alpha_key = lora_keys(style, layer)
        tensors[down_key], tensors[up_key] = down, up
        if alpha is not None:
            tensors[alpha_key] = torch.tensor(float(alpha))
        factors[layer] = (down.float(), up.float(), (alpha if alpha is not None else rank) / rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return factors


def block_layers(shapes: dict[str, tuple[int, int]], *parts: str) -> dict[str, tuple[int, int]]:
    """The transformer-block layers of ``shapes`` whose names contain one of ``parts``."""
    return {k: v for k, v in shapes.items() if k.startswith("transformer_blocks.") and any(p in k for p in parts)}
