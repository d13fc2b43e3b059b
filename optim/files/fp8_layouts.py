"""fp8 weights in ComfyUI's two scaled layouts, read as ComfyUI reads them.

- *scaled* files (``qwen_image_edit_2509_fp8_e4m3fn``, ``qwen_2.5_vl_7b_fp8_scaled``): a
  ``scaled_fp8`` marker tensor, and per quantized Linear a float32 ``scale_weight`` (and
  possibly ``scale_input``). ComfyUI computes ``weight.to(dtype) * scale_weight.to(dtype)``.
- *mixed* files (``*_fp8mixed``): per quantized Linear a ``weight_scale`` (and possibly
  ``input_scale``), the quantized layers named either in the safetensors metadata
  ``_quantization_metadata`` or by a per-layer ``comfy_quant`` tensor. ComfyUI computes
  ``weight.to(dtype)`` then multiplies in place by the float32 ``weight_scale``.
- plain fp8 files (no scales): the weight is used as stored (scale 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

import torch

from .safetensors_file import SafetensorsFile, metadata_json

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALED_MARKER = "scaled_fp8"
# Per-layer tensors that carry scales or quantization notes, never weights of their own.
SCALE_SUFFIXES = (
    ".scale_weight",
    ".scale_input",
    ".weight_scale",
    ".input_scale",
    ".weight_scale_2",
    ".pre_quant_scale",
    ".comfy_quant",
)


class Fp8Layout(str, Enum):
    NONE = "none"  # no fp8 weights
    PLAIN = "plain"  # fp8 weights, no scales
    SCALED = "scaled"  # ComfyUI "scaled fp8"
    MIXED = "mixed"  # ComfyUI mixed precision (fp8mixed)


def detect_layout(file: SafetensorsFile) -> Fp8Layout:
    """Which fp8 layout a file uses (the scaled marker may sit under a prefix)."""
    keys = file.tensors
    if any(k == SCALED_MARKER or k.endswith("." + SCALED_MARKER) for k in keys):
        return Fp8Layout.SCALED
    if "_quantization_metadata" in file.metadata or any(k.endswith((".weight_scale", ".comfy_quant")) for k in keys):
        return Fp8Layout.MIXED
    if any(t.dtype in FP8_DTYPES for t in keys.values()):
        return Fp8Layout.PLAIN
    return Fp8Layout.NONE


def is_scale_key(key: str) -> bool:
    """True for marker and scale tensors that accompany weights."""
    return key == SCALED_MARKER or key.endswith("." + SCALED_MARKER) or key.endswith(SCALE_SUFFIXES)


def mixed_quantized_layers(file: SafetensorsFile) -> set[str]:
    """Layer names the mixed-precision metadata marks as quantized (either way of saying it)."""
    layers: set[str] = set()
    meta = metadata_json(file.metadata, "_quantization_metadata")
    if isinstance(meta, dict) and isinstance(meta.get("layers"), dict):
        layers.update(meta["layers"])
    for key in file.tensors:
        if key.endswith(".comfy_quant"):
            layers.add(key[: -len(".comfy_quant")])
    return layers


@dataclass(frozen=True)
class Fp8Weight:
    """An fp8 weight and its float32 scale; ``dequantize`` gives what ComfyUI computes with."""

    data: torch.Tensor
    scale: torch.Tensor
    layout: Fp8Layout

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        if self.layout is Fp8Layout.SCALED:
            return self.data.to(dtype) * self.scale.to(device=self.data.device, dtype=dtype)
        weight = self.data.to(dtype)
        if self.layout is Fp8Layout.MIXED:
            weight.mul_(self.scale.to(self.data.device))
        return weight


def scale_key_for(weight_key: str, layout: Fp8Layout) -> str | None:
    """Where the scale of ``<layer>.weight`` is stored in this layout."""
    if not weight_key.endswith(".weight"):
        return None
    layer = weight_key[: -len(".weight")]
    return {Fp8Layout.SCALED: f"{layer}.scale_weight", Fp8Layout.MIXED: f"{layer}.weight_scale"}.get(layout)


def quantize_absmax(
    weight: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn, chunk_elements: int = 1 << 20
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmax quantization, as ComfyUI's guide describes: returns (fp8 data, float32 scale).

    Works in row chunks so the float32 temporaries stay small next to a large weight, on the
    weight's own device.
    """
    rows = weight.reshape(weight.shape[0], -1) if weight.ndim else weight.reshape(1, 1)
    step = max(1, chunk_elements // max(1, rows.shape[1]))
    amax = torch.zeros((), dtype=torch.float32, device=weight.device)
    for start in range(0, rows.shape[0], step):
        amax = torch.maximum(amax, rows[start : start + step].float().abs().max())
    scale = (amax / torch.finfo(dtype).max).clamp(min=1e-12)
    out = torch.empty(rows.shape, dtype=dtype, device=weight.device)
    for start in range(0, rows.shape[0], step):
        out[start : start + step] = (rows[start : start + step].float() / scale).to(dtype)
    return out.reshape(weight.shape), scale.reshape(())


def comfy_quant_tensor(fmt: str = "float8_e4m3fn") -> torch.Tensor:
    """A per-layer ``comfy_quant`` note (JSON bytes in a uint8 tensor)."""
    return torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
