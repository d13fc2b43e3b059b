"""Write the tiny models as ComfyUI's split files, in every layout users have.

From a tiny diffusers folder this writes, with ComfyUI's real key names and encodings:
- ``diffusion_models/``: bf16 (no prefix), fp8 "scaled" (``scaled_fp8`` marker, ``scale_weight`` per
  Linear, ``model.diffusion_model.`` prefix), fp8 "mixed" (``weight_scale`` + ``comfy_quant`` per Linear,
  or the ``_quantization_metadata`` header entry), with the 2511 marker ``__index_timestep_zero__``;
- ``diffusion_models/`` also GGUF files as ComfyUI-GGUF writes them (``tools/gguf_files.py``) and Comfy-Org's
  int8 (ConvRot), mxfp8 and nvfp4 files (``tools/comfy_quant_files.py``);
- ``text_encoders/``: Qwen2.5-VL in the original names, bf16 and fp8 scaled;
- ``vae/``: the Wan-VAE original names, RGB (Edit) and RGBA (Layered).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from optim.files.fp8_layouts import comfy_quant_tensor, quantize_absmax
from optim.files.key_maps import text_encoder_to_comfy, vae_to_diffusers

from .comfy_quant_files import write_tiny_comfy_quant_files
from .gguf_files import write_tiny_transformer_ggufs

STAMP = "qwenfit-tiny-layouts.json"
LAYOUT_VERSION = 8


def _load_folder_part(folder: Path, part: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted((folder / part).glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def _bf16(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}


def _is_block_linear(key: str, scope: str) -> bool:
    return key.startswith(scope) and key.endswith(".weight") and "norm" not in key


def scaled_fp8(tensors: dict[str, torch.Tensor], quantize: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """ComfyUI's "scaled fp8": fp8 weights with ``scale_weight`` and a ``scaled_fp8`` marker."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if quantize(key) and value.ndim == 2:
            out[key], out[key.removesuffix(".weight") + ".scale_weight"] = quantize_absmax(value)
        else:
            out[key] = value
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def mixed_fp8(
    tensors: dict[str, torch.Tensor], quantize: Callable[[str], bool], in_header: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """ComfyUI's mixed precision: ``weight_scale`` per quantized Linear, noted per layer
    (``comfy_quant`` tensors) or in the ``_quantization_metadata`` header entry."""
    out: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, str]] = {}
    for key, value in tensors.items():
        if quantize(key) and value.ndim == 2:
            layer = key.removesuffix(".weight")
            out[key], out[layer + ".weight_scale"] = quantize_absmax(value)
            layers[layer] = {"format": "float8_e4m3fn"}
            if not in_header:
                out[layer + ".comfy_quant"] = comfy_quant_tensor()
        else:
            out[key] = value
    metadata = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if in_header else {}
    return out, metadata


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tensors.items()}


def _comfy_vae(tensors: dict[str, torch.Tensor], num_res_blocks: int, levels: int) -> dict[str, torch.Tensor]:
    # Our key map goes ComfyUI -> diffusers; ComfyUI's names are the ones that map onto these keys.
    return {_vae_original_name(k, num_res_blocks, levels): v for k, v in tensors.items()}


def _vae_original_name(diffusers_key: str, num_res_blocks: int, levels: int) -> str:
    for candidate in _vae_original_candidates(diffusers_key, num_res_blocks, levels):
        if vae_to_diffusers(candidate, num_res_blocks, levels) == diffusers_key:
            return candidate
    raise KeyError(diffusers_key)


def _vae_original_candidates(key: str, num_res_blocks: int, levels: int):
    """Every original name that could map to ``key`` (a small search, no second table to keep in sync)."""
    import re

    side, _, rest = key.partition(".")
    leaf_map = {
        "norm1.gamma": "residual.0.gamma",
        "conv1": "residual.2",
        "norm2.gamma": "residual.3.gamma",
        "conv2": "residual.6",
        "conv_shortcut": "shortcut",
    }

    def leaves(inner: str) -> list[str]:
        # Renamed leaves first: the forward map passes unknown names through unchanged.
        outs = [old + inner[len(new) :] for new, old in leaf_map.items() if inner == new or inner.startswith(new + ".")]
        return outs + [inner]

    if key.startswith("quant_conv."):
        return ["conv1." + key[len("quant_conv.") :]]
    if key.startswith("post_quant_conv."):
        return ["conv2." + key[len("post_quant_conv.") :]]
    head = {"norm_out.gamma": "head.0.gamma", "conv_out": "head.2", "conv_in": "conv1"}
    for new, old in head.items():
        if rest == new or rest.startswith(new + "."):
            return [f"{side}.{old}{rest[len(new) :]}"]
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.*)", rest)
    if m:
        index = {"attentions": 1}.get(m.group(1), 0 if m.group(2) == "0" else 2)
        return [f"{side}.middle.{index}.{leaf}" for leaf in leaves(m.group(3))]
    m = re.match(r"down_blocks\.(\d+)\.(.*)", rest)
    if m:
        return [f"{side}.downsamples.{m.group(1)}.{leaf}" for leaf in leaves(m.group(2))]
    m = re.match(r"up_blocks\.(\d+)\.(?:resnets\.(\d+)|upsamplers\.0)\.(.*)", rest)
    if m:
        return [
            f"{side}.upsamples.{i}.{leaf}" for i in range(levels * (num_res_blocks + 2)) for leaf in leaves(m.group(3))
        ]
    return [key]


def write_layouts(folders: dict[str, Path], models_dir: Path) -> list[Path]:
    """Write every split-file layout of the tiny models under ``models_dir``; returns the files."""
    written: list[Path] = []

    def save(tensors: dict[str, torch.Tensor], kind: str, name: str, metadata: dict[str, str] | None = None) -> None:
        path = models_dir / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata or None)
        tmp.replace(path)
        written.append(path)

    blocks = lambda k: _is_block_linear(k, "transformer_blocks.")  # noqa: E731
    late_blocks = lambda k: blocks(k) and not k.startswith("transformer_blocks.0.")  # noqa: E731 (mixed keeps block 0)
    for variant, folder in folders.items():
        stem = f"qwenfit_tiny_{variant.replace('-', '_')}"
        transformer = _bf16(_load_folder_part(folder, "transformer"))
        if variant == "edit-2511":
            transformer["__index_timestep_zero__"] = torch.empty(0)
        save(transformer, "diffusion_models", f"{stem}_bf16.safetensors")
        written += write_tiny_transformer_ggufs(transformer, variant, models_dir / "diffusion_models")
        written += write_tiny_comfy_quant_files(transformer, variant, models_dir / "diffusion_models")
        if variant == "edit-2509":
            save(
                _prefixed(scaled_fp8(transformer, blocks), "model.diffusion_model."),
                "diffusion_models",
                f"{stem}_fp8_e4m3fn.safetensors",
            )
        else:
            mixed, metadata = mixed_fp8(transformer, late_blocks, in_header=variant == "layered")
            save(mixed, "diffusion_models", f"{stem}_fp8mixed.safetensors", metadata)
        vae_config = json.loads((folder / "vae" / "config.json").read_text())
        vae = _comfy_vae(
            _bf16(_load_folder_part(folder, "vae")), vae_config["num_res_blocks"], len(vae_config["dim_mult"])
        )
        vae_name = "qwenfit_tiny_qwen_image_layered_vae" if variant == "layered" else "qwenfit_tiny_qwen_image_vae"
        save(vae, "vae", f"{vae_name}.safetensors")
    text = _bf16(_load_folder_part(folders["edit-2509"], "text_encoder"))
    text = {text_encoder_to_comfy(k): v for k, v in text.items()}
    save(text, "text_encoders", "qwenfit_tiny_qwen_2.5_vl.safetensors")
    lm_layers = lambda k: _is_block_linear(k, "model.layers.")  # noqa: E731
    save(scaled_fp8(text, lm_layers), "text_encoders", "qwenfit_tiny_qwen_2.5_vl_fp8_scaled.safetensors")
    written += write_loras(folders["edit-2509"], models_dir / "loras")
    (models_dir / STAMP).write_text(json.dumps({"version": LAYOUT_VERSION}))
    return written


def layouts_current(models_dir: Path) -> bool:
    try:
        return json.loads((models_dir / STAMP).read_text()).get("version") == LAYOUT_VERSION
    except (OSError, ValueError):
        return False


LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "img_mlp.net.2")
LORA_RANK = 4


def write_loras(folder: Path, out: Path) -> list[Path]:
    """A tiny Lightning-named LoRA, the same numbers in kohya and in diffusers (PEFT) format."""
    transformer = _load_folder_part(folder, "transformer")
    blocks = sorted({int(k.split(".")[1]) for k in transformer if k.startswith("transformer_blocks.")})
    generator = torch.Generator().manual_seed(1234)
    kohya: dict[str, torch.Tensor] = {}
    peft: dict[str, torch.Tensor] = {}
    for block in blocks:
        for target in LORA_TARGETS:
            layer = f"transformer_blocks.{block}.{target}"
            out_features, in_features = transformer[f"{layer}.weight"].shape
            down = torch.randn(LORA_RANK, in_features, generator=generator) * 0.1
            up = torch.randn(out_features, LORA_RANK, generator=generator) * 0.1
            name = "lora_unet_" + layer.replace(".", "_")
            kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"] = down, up
            kohya[f"{name}.alpha"] = torch.tensor(float(LORA_RANK))  # alpha = rank: scale 1, as PEFT's default
            peft[f"transformer.{layer}.lora_A.weight"], peft[f"transformer.{layer}.lora_B.weight"] = down, up
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        out / "qwenfit_tiny_Lightning-4steps_kohya.safetensors",
        out / "qwenfit_tiny_Lightning-4steps_diffusers.safetensors",
    ]
    for path, tensors in zip(paths, (kohya, peft), strict=True):
        save_file(tensors, str(path))
    return paths
