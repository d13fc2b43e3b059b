"""Comfy-Org's 2026 quantized safetensors files: which layers hold which format, read from their notes.

Layout as ComfyUI's newest loader reads it (``comfy/ops.py`` ``_load_quantized_module`` with the layouts of
comfy-kitchen, Comfy-Org/comfy-kitchen ``comfy_kitchen/tensor/{int8,mxfp8,nvfp4}.py``): every quantized Linear
``<layer>`` has a ``<layer>.comfy_quant`` uint8 tensor holding JSON (``{"format": ...}``; the file's
``_quantization_metadata`` header entry may say the same per layer) and, beside ``<layer>.weight``:

- ``int8_tensorwise``: int8 weight [out, in]; float ``weight_scale`` per row [out, 1] (or one per tensor);
  ``"convrot": true`` with ``"convrot_groupsize"`` (default 256; also accepted inside a ``"params"`` table)
  marks weights stored rotated by a regular Hadamard matrix over groups of input features (ConvRot);
- ``mxfp8``: fp8 e4m3 weight padded to multiples of 32; ``weight_scale`` e8m0 (power-of-two) scales, one per
  32 weights of a row, in cuBLAS's swizzled block layout;
- ``nvfp4``: e2m1 codes packed two per byte (even index in the high nibble), padded to multiples of 16;
  ``weight_scale`` fp8 e4m3 scales, one per 16 weights, swizzled likewise; ``weight_scale_2`` one float32.

fp8 layers (``float8_e4m3fn``, ``float8_e5m2``) stay with optim/files/fp8_layouts.py. Any other format name
(ComfyUI's 4-bit ConvRot, SVDQuant, AWQ, ...) is refused with the fix, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from ..errors import QwenFitError
from .safetensors_file import SafetensorsFile, metadata_json

INT8 = "int8_tensorwise"
MXFP8 = "mxfp8"
NVFP4 = "nvfp4"
READ_FORMATS = (INT8, MXFP8, NVFP4)  # the formats this module describes (optim/quant/ expands them)
FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")  # ComfyUI's fp8 mixed layers (fp8_layouts.py reads them)
DEFAULT_CONVROT_GROUP = 256  # ComfyUI's default when the note names no group size
# The stored dtypes each format's tensors may have (scales may be stored as their raw bytes, uint8).
WEIGHT_DTYPES = {INT8: (torch.int8,), MXFP8: (torch.float8_e4m3fn, torch.uint8), NVFP4: (torch.uint8,)}
SCALE_DTYPES = {
    INT8: (torch.float32, torch.float16, torch.bfloat16),
    MXFP8: (torch.float8_e8m0fnu, torch.uint8),
    NVFP4: (torch.float8_e4m3fn, torch.uint8),
}


@dataclass(frozen=True)
class ComfyQuantLayer:
    """One Linear a Comfy-Org file stores quantized: its format and where its tensors are (file names)."""

    layer: str  # the layer's name in the file, e.g. "model.diffusion_model.transformer_blocks.0.attn.to_q"
    format: str  # one of READ_FORMATS
    convrot_groupsize: int = 0  # int8 only: the Hadamard group size the weight is rotated by (0: not rotated)

    @property
    def weight_key(self) -> str:
        return f"{self.layer}.weight"

    @property
    def scale_key(self) -> str:
        return f"{self.layer}.weight_scale"

    @property
    def global_scale_key(self) -> str | None:
        """nvfp4's per-tensor float32 scale (``weight_scale_2``); None for the other formats."""
        return f"{self.layer}.weight_scale_2" if self.format == NVFP4 else None

    @property
    def stored_keys(self) -> tuple[str, ...]:
        """Every tensor of the layer's weight as the file stores it (the bias excluded)."""
        extra = (self.global_scale_key,) if self.global_scale_key else ()
        return (self.weight_key, self.scale_key, *extra)

    @property
    def format_name(self) -> str:
        """How plans name the format."""
        if self.format == INT8:
            return f"int8 convrot {self.convrot_groupsize}" if self.convrot_groupsize else "int8 tensorwise"
        return self.format


def _fix(name: str) -> str:
    return (
        f"{name} is a quantized ComfyUI file in a format QwenFit does not read. QwenFit reads int8 (with or without "
        "ConvRot), mxfp8, nvfp4 and fp8 layers: pick one of those files (or the bf16 or fp8mixed release)."
    )


def _layer_notes(file: SafetensorsFile) -> dict[str, dict]:
    """Layer name -> its quantization note, from ``.comfy_quant`` tensors and the header entry."""
    notes: dict[str, dict] = {}
    meta = metadata_json(file.metadata, "_quantization_metadata")
    if isinstance(meta, dict) and isinstance(meta.get("layers"), dict):
        notes.update({k: v for k, v in meta["layers"].items() if isinstance(v, dict)})
    for key, info in file.tensors.items():
        if not key.endswith(".comfy_quant"):
            continue
        layer = key[: -len(".comfy_quant")]
        if info.dtype != torch.uint8 or len(info.shape) != 1 or info.nbytes > 1 << 16:
            raise QwenFitError(f"{file.path.name}: {key} is not a ComfyUI quantization note. {_fix(file.path.name)}")
        try:
            note = json.loads(file.read(key).numpy().tobytes())
        except (UnicodeDecodeError, ValueError):
            raise QwenFitError(
                f"{file.path.name}: the note {key} is not JSON; the file may be corrupt: download it again."
            ) from None
        if not isinstance(note, dict):
            raise QwenFitError(f"{file.path.name}: the note {key} is not a table. {_fix(file.path.name)}")
        notes[layer] = note
    return notes


def _convrot_group(note: dict, where: str) -> int:
    """The ConvRot group size of an int8 note (0: not rotated); both spellings ComfyUI accepts."""
    params = note.get("params") if isinstance(note.get("params"), dict) else {}
    if not note.get("convrot", params.get("convrot", False)):
        return 0
    group = note.get("convrot_groupsize", params.get("convrot_groupsize", DEFAULT_CONVROT_GROUP))
    try:
        group = int(group)
    except (TypeError, ValueError):
        group = -1
    # A regular Hadamard matrix (Kronecker powers of a 4x4 one) exists for powers of 4 only.
    if group < 4 or group & (group - 1) or (group.bit_length() - 1) % 2:
        raise QwenFitError(
            f"{where}: ConvRot group size {group} is not a power of 4 (ComfyUI rotates by regular Hadamard "
            "matrices of 4, 16, 64, 256 ... rows); the file is corrupt or not ComfyUI's: download it again."
        )
    return group


def comfy_quant_layers(file: SafetensorsFile) -> dict[str, ComfyQuantLayer]:
    """The layers ``file`` stores in a READ_FORMATS format, by layer name (as the file names it); fp8 layers
    are left out. An unknown format, or a layer missing a tensor its format needs, raises the fix."""
    layers: dict[str, ComfyQuantLayer] = {}
    name = file.path.name
    for layer, note in _layer_notes(file).items():
        fmt = note.get("format")
        if fmt in FP8_FORMATS:
            continue
        if fmt not in READ_FORMATS:
            raise QwenFitError(f"{name} stores {layer} as {fmt!r}. {_fix(name)}")
        group = _convrot_group(note, f"{name} ({layer})") if fmt == INT8 else 0
        spec = ComfyQuantLayer(layer, fmt, group)
        for key in spec.stored_keys:
            if key not in file.tensors:
                raise QwenFitError(
                    f"{name} lacks {key}, which its {fmt} layer {layer} needs: the file is incomplete or corrupt. "
                    "Download it again."
                )
        weight, scale = file.tensors[spec.weight_key], file.tensors[spec.scale_key]
        if weight.dtype not in WEIGHT_DTYPES[fmt] or len(weight.shape) != 2 or scale.dtype not in SCALE_DTYPES[fmt]:
            raise QwenFitError(
                f"{name}: {layer} is marked {fmt} but stores a {weight.dtype} weight of shape {list(weight.shape)} "
                f"with {scale.dtype} scales; the file is corrupt or mislabelled. {_fix(name)}"
            )
        if group and weight.shape[1] % group:
            raise QwenFitError(
                f"{name}: {layer} has {weight.shape[1]} input features, not a multiple of its ConvRot group "
                f"{group}; the file is corrupt: download it again."
            )
        layers[layer] = spec
    return layers
