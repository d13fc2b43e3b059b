"""Comfy-Org's quantized layers as one weight format (``ComfyQuantLayers``, registered in
optim/quant/format_registry.py): which class holds a layer a file stores quantized (its ``.comfy_quant`` note's
format), and the layers built from it. Apart from optim/quant/comfy_quant.py, which the layer classes build on."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import QwenFitError
from ..files.comfy_quant import INT8, MXFP8, NVFP4, ComfyQuantLayer
from ..files.file_tensors import FileTensor, placeholder
from ..files.weight_source import WeightSource
from .comfy_int8 import ComfyInt8ConvRotLinear, ComfyInt8Linear
from .comfy_quant import ComfyQuantLinear
from .mxfp8 import Mxfp8Linear
from .nvfp4 import Nvfp4Linear
from .weight_format import WeightFormat


def comfy_quant_format(spec: ComfyQuantLayer) -> type[ComfyQuantLinear]:
    """The format class of a layer a Comfy-Org file stores quantized."""
    if spec.format == INT8:
        return ComfyInt8ConvRotLinear if spec.convrot_groupsize else ComfyInt8Linear
    return {MXFP8: Mxfp8Linear, NVFP4: Nvfp4Linear}[spec.format]


def comfy_quant_linear(
    spec: ComfyQuantLayer, stored: dict[str, torch.Tensor], out_features: int, in_features: int, bias
) -> ComfyQuantLinear:
    """The layer for ``spec`` from its tensors as read (file suffix -> tensor)."""
    cls = comfy_quant_format(spec)
    buffers = {name: stored[suffix] for name, suffix in cls.stored_as.items()}
    return cls.from_stored(buffers, out_features, in_features, bias, spec.convrot_groupsize)


def empty_comfy_quant(spec: ComfyQuantLayer, out_features: int, in_features: int, bias: nn.Parameter | None):
    """A meta layer of ``spec``'s format (sizes from the headers)."""
    layer = comfy_quant_format(spec).empty(out_features, in_features, bias, torch.bfloat16)
    layer.convrot_groupsize = spec.convrot_groupsize
    return layer


class ComfyQuantLayers(WeightFormat):
    """Comfy-Org's quantized layers (int8 with or without ConvRot, mxfp8, nvfp4), described by the file's
    per-layer metadata; one layer class per format."""

    name = "Comfy-Org quantized layers"

    def stored(self, source: WeightSource, key: str) -> ComfyQuantLayer | None:
        return source.comfy_quant(key)

    def holds(self, source, file_key, info):
        return source.comfy_quant_key(file_key)

    def empty(self, stored, out_features, in_features, bias, dtype):
        return empty_comfy_quant(stored, out_features, in_features, bias)

    def layer(self, stored, source, layer, shape, bias, dtype, device, in_files):
        out_features, in_features = shape
        cls = comfy_quant_format(stored)
        file, _ = source.locate(f"{layer}.weight")
        file_keys = {
            "weight": stored.weight_key,
            "weight_scale": stored.scale_key,
            "weight_scale_2": stored.global_scale_key,
        }
        # Sizes checked from the header first: a layer left in the files is read only when used.
        header = {
            s: torch.empty(file.shape(k), dtype=file.tensors[k].dtype, device="meta") for s, k in file_keys.items() if k
        }
        _fitting(source, stored, header, shape)
        recipes: dict[str, FileTensor] = {}
        bias_value = bias(recipes if in_files else None)
        if in_files:
            specs = cls.buffer_specs(out_features, in_features, dtype)
            tensors = {}
            for name, suffix in cls.stored_as.items():
                tensors[suffix] = placeholder(*specs[name])
                recipes[f"{layer}.{name}"] = FileTensor(file, file_keys[suffix])
        else:
            tensors = {suffix: file.read(file_keys[suffix]).to(device) for suffix in cls.stored_as.values()}
        return _fitting(source, stored, tensors, shape, bias_value), recipes

    def expand(self, stored, source, key, dtype):
        raise QwenFitError(f"{source.names}: {key} is stored as a quantized layer but is no Linear weight.")


def _fitting(source: WeightSource, spec: ComfyQuantLayer, stored: dict, shape: tuple[int, int], bias=None) -> nn.Module:
    """The Comfy-Org layer holding ``stored``, or the fix when its tensors do not fit the model's layer."""
    try:
        return comfy_quant_linear(spec, stored, *shape, bias)
    except ValueError as exc:
        raise QwenFitError(
            f"{source.names}: {spec.layer} ({spec.format_name}) does not fit the model's {shape[0]}x{shape[1]} "
            f"layer ({exc}): the file is corrupt or belongs to another model. Pick the matching file."
        ) from None
