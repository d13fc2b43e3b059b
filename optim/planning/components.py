"""The components of a loaded pipeline as the plan lists them: size, storage format, compute dtype,
and where each waits between uses."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..files.tensor_layout import layout_of
from ..quant.compressed_linear import compressed_layers
from ..quant.dtypes import dtype_name
from .plan import ComponentPlacement

COMPONENTS = ("text_encoder", "transformer", "vae")


def _size(module: nn.Module) -> tuple[int, int, str]:
    """(parameter count, bytes, "formats+compute dtype"), compressed Linear weights (buffers) included."""
    params = list(module.parameters())
    compressed = compressed_layers(module)
    count = sum(p.numel() for p in params) + sum(m.in_features * m.out_features for m in compressed)
    label = dtype_name(params[0].dtype) if params else "fp32"
    formats = sorted({m.format_name for m in compressed})
    return count, layout_of(module).nbytes, "+".join([*formats, label])


def describe_components(pipeline: Any, device: str, whole_model_offload: bool) -> tuple[ComponentPlacement, ...]:
    """Per component of ``pipeline``: its size and formats, its home between uses and its residency.
    With the pack's engine the transformer and text encoder wait in pinned host memory and the plan
    of each run says what becomes resident; with diffusers' offload whole components move."""
    on_gpu = device.startswith("cuda")
    placements = []
    for name in COMPONENTS:
        count, nbytes, dtype = _size(getattr(pipeline, name))
        if not on_gpu or name == "vae":
            home, residency = device, "resident"
        elif whole_model_offload:
            home, residency = "cpu", "offloaded (whole)"
        else:
            home, residency = "pinned cpu", "planned per run (resident or streamed)"
        placements.append(ComponentPlacement(name, count, dtype, nbytes, home, device, residency))
    return tuple(placements)
