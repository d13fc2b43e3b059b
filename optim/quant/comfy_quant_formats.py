"""Which class holds a layer a Comfy-Org file stores quantized (its ``.comfy_quant`` note's format), and the
layers built from it. Apart from optim/quant/comfy_quant.py, which the format classes build on."""

from __future__ import annotations

import torch
from torch import nn

from ..files.comfy_quant import INT8, MXFP8, NVFP4, ComfyQuantLayer
from .comfy_int8 import ComfyInt8ConvRotLinear, ComfyInt8Linear
from .comfy_quant import ComfyQuantLinear
from .mxfp8 import Mxfp8Linear
from .nvfp4 import Nvfp4Linear


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
