"""Write tiny Comfy-Org quantized files (int8 with and without ConvRot, mxfp8, nvfp4), offline.

Each Linear weight of the transformer blocks (and the timestep embedder's first layer, whose 256 inputs take
ComfyUI's default ConvRot group) is quantized the way comfy-kitchen's portable quantizers describe
(Comfy-Org/comfy-kitchen ``comfy_kitchen/backends/eager/quantization.py``): int8 rows by absmax / 127 after
the ConvRot rotation; mxfp8 blocks of 32 with the smallest power-of-two scale that fits 448; nvfp4 with a
tensor scale of absmax / (448 * 6), fp8 block scales of 16 and e2m1 codes rounded to nearest even. Tensors are
named and noted as ComfyUI's ``_quantized_weight_state_dict`` saves them (``weight_scale``, ``weight_scale_2``,
``comfy_quant``). Written from that description: the tests decode these files with their own reference.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from optim.quant.comfy_int8 import rotate_groups
from optim.quant.comfy_quant import round_up, swizzled_shape

E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
TINY_GROUP = 16  # the tiny blocks' widths (32, 128) take no group of 256: ComfyUI accepts any power of 4


def note(conf: dict) -> torch.Tensor:
    """A ``.comfy_quant`` tensor: the JSON's UTF-8 bytes as uint8."""
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


def swizzle(table: torch.Tensor) -> torch.Tensor:
    """A block-scale table [rows, cols] in cuBLAS's layout (padded with zeros to tiles of 128 x 4)."""
    rows, cols = table.shape
    padded_rows, padded_cols = swizzled_shape(rows, cols)
    padded = torch.zeros((padded_rows, padded_cols), dtype=table.dtype)
    padded[:rows, :cols] = table
    tiles = padded.reshape(padded_rows // 128, 4, 32, padded_cols // 4, 4)  # [tile row, r//32, r%32, tile col, c]
    return tiles.permute(0, 3, 2, 1, 4).reshape(padded_rows, padded_cols)


def _pad(weight: torch.Tensor, multiple: int) -> torch.Tensor:
    rows, cols = weight.shape
    out = torch.zeros((round_up(rows, multiple), round_up(cols, multiple)), dtype=torch.float32)
    out[:rows, :cols] = weight.float()
    return out


def quantize_int8(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale [out, 1]) of ``weight``, rotated per ``group`` first (0: not rotated)."""
    w = weight.float()
    if group:
        w = rotate_groups(w, group)
    scale = (w.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-30)
    return (w / scale).round().clamp(-128, 127).to(torch.int8), scale


def quantize_mxfp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight padded to 32, e8m0 scales swizzled) of ``weight``."""
    w = _pad(weight, 32)
    blocks = w.reshape(w.shape[0], -1, 32)
    amax = blocks.abs().amax(dim=-1)
    exponent = torch.ceil(torch.log2((amax / 448.0).clamp(min=2.0**-127))).to(torch.int32) + 127
    exponent = torch.where(amax == 0, torch.zeros_like(exponent), exponent.clamp(0, 254))
    scale = torch.where(amax == 0, torch.ones_like(amax), torch.exp2(exponent.float() - 127))
    data = (blocks / scale.unsqueeze(-1)).clamp(-448, 448).reshape(w.shape).to(torch.float8_e4m3fn)
    return data, swizzle(exponent.to(torch.uint8)).view(torch.float8_e8m0fnu)


def _e2m1_codes(values: torch.Tensor) -> torch.Tensor:
    """e2m1 codes (uint8, sign in bit 3) of ``values`` (already within +-6), rounded to nearest, ties to even."""
    a = values.abs()
    code = torch.zeros(values.shape, dtype=torch.uint8)
    for upper in range(1, len(E2M1_GRID)):
        mid = (E2M1_GRID[upper - 1] + E2M1_GRID[upper]) / 2
        code += ((a > mid) | ((a == mid) & (upper % 2 == 0))).to(torch.uint8)
    return code | ((values < 0).to(torch.uint8) << 3)


def quantize_nvfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed e2m1 weight padded to 16, fp8 block scales swizzled, float32 tensor scale) of ``weight``."""
    w = _pad(weight, 16)
    tensor_scale = (w.abs().max() / (448.0 * 6.0)).clamp(min=1e-30)
    blocks = w.reshape(w.shape[0], -1, 16)
    block_scale = (blocks.abs().amax(dim=-1) / 6.0 / tensor_scale).clamp(max=448.0).to(torch.float8_e4m3fn)
    total = block_scale.float() * tensor_scale
    scaled = torch.where(total.unsqueeze(-1) == 0, 0.0, blocks / total.unsqueeze(-1).clamp(min=1e-38))
    codes = _e2m1_codes(scaled.clamp(-6, 6).reshape(w.shape))
    packed = (codes[:, 0::2] << 4) | codes[:, 1::2]  # the even-indexed weight in the high nibble
    return packed, swizzle(block_scale.view(torch.uint8)).view(torch.float8_e4m3fn), tensor_scale.reshape(())


def quantized_layer(layer: str, weight: torch.Tensor, label: str) -> dict[str, torch.Tensor]:
    """The tensors ComfyUI saves for one Linear weight in format ``label`` ("int8", "int8_convrot", "int8_params"
    (the rotation noted inside a "params" table), "mxfp8", "nvfp4"), the bias excluded."""
    if label.startswith("int8"):
        group = 0 if label == "int8" else (256 if weight.shape[1] % 256 == 0 else TINY_GROUP)
        q, scale = quantize_int8(weight, group)
        conf: dict = {"format": "int8_tensorwise"}
        rotation = {"convrot": True, "convrot_groupsize": group} if group else {}
        conf.update({"params": rotation} if label == "int8_params" else rotation)
        return {f"{layer}.weight": q, f"{layer}.weight_scale": scale, f"{layer}.comfy_quant": note(conf)}
    if label == "mxfp8":
        data, scale = quantize_mxfp8(weight)
        return {
            f"{layer}.weight": data,
            f"{layer}.weight_scale": scale,
            f"{layer}.comfy_quant": note({"format": "mxfp8"}),
        }
    if label == "nvfp4":
        data, scale, scale_2 = quantize_nvfp4(weight)
        return {
            f"{layer}.weight": data,
            f"{layer}.weight_scale": scale,
            f"{layer}.weight_scale_2": scale_2,
            f"{layer}.comfy_quant": note({"format": "nvfp4"}),
        }
    raise ValueError(f"unknown format label {label!r}")


def quantized_file(
    tensors: dict[str, torch.Tensor], label: str, quantize: Callable[[str], bool], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """A whole transformer (``name -> tensor``) with the weights ``quantize`` picks in format ``label``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if quantize(key) and value.ndim == 2:
            out.update(quantized_layer(prefix + key.removesuffix(".weight"), value, label))
        else:  # a marker such as 2511's __index_timestep_zero__ keeps its bare name
            out[key if key.startswith("__") else prefix + key] = value
    return out


# The tiny files: (file label, format label) per variant; 2511's int8 ConvRot file carries ComfyUI's
# ``model.diffusion_model.`` prefix, as Comfy-Org's qwen_image_edit_2511_int8_convrot does.
TINY_COMFY_QUANT = {
    "edit-2509": [("int8_convrot", "int8_convrot"), ("int8", "int8"), ("mxfp8", "mxfp8"), ("nvfp4", "nvfp4")],
    "edit-2511": [("int8_convrot", "int8_convrot"), ("mxfp8", "mxfp8"), ("nvfp4", "nvfp4")],
    "layered": [("int8_convrot", "int8_params"), ("mxfp8", "mxfp8"), ("nvfp4", "nvfp4")],
}


def tiny_quantized_layer(key: str) -> bool:
    """The tiny files' quantized weights: the blocks' Linears and the timestep embedder's first layer."""
    block = key.startswith("transformer_blocks.") and "norm" not in key
    return key.endswith(".weight") and (block or key == "time_text_embed.timestep_embedder.linear_1.weight")


def write_tiny_comfy_quant_files(tensors: dict[str, torch.Tensor], variant: str, out_dir: Path) -> list[Path]:
    """The Comfy-Org quantized files of one tiny transformer (``name -> tensor``, ComfyUI's names) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_label, label in TINY_COMFY_QUANT[variant]:
        path = out_dir / f"qwenfit_tiny_{variant.replace('-', '_')}_{file_label}.safetensors"
        prefix = "model.diffusion_model." if variant == "edit-2511" and label == "int8_convrot" else ""
        out = quantized_file(tensors, label, tiny_quantized_layer, prefix)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in out.items()}, str(tmp))
        tmp.replace(path)
        written.append(path)
    return written
