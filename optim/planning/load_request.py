"""A load request (a frozen settings value) and what it says before anything loads.

``LoadRequest`` names the files and the settings that decide which weights are loaded and how.
``describe`` reads its files (headers and configs only) into a ``SourceDescription``; ``compute_dtypes``
and ``fp8_modes`` say what its precision settings mean for each component. The loader, the speed rung
(``arithmetic_choice.py``), the host plan (``host_memory.py``) and the plan preview all start from these,
so the preview needs nothing from the loading layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..files.sources import (
    DiffusersFolder,
    PipelineSource,
    SourceDescription,
    describe_folder,
    describe_split_files,
    inspect_folder,
)
from ..quant.dtypes import compute_dtype
from ..quant.format_registry import refuse_unread
from ..quant.fp8_scope import fp8_mode
from ..settings import OffloadSettings, PrecisionSettings


@dataclass(frozen=True)
class LoadRequest:
    """Everything that decides which weights are loaded and how; equal requests share a pipeline.
    LoRAs are not part of it: they apply at run time (``LoadedPipeline.with_lora``), never reload."""

    source: PipelineSource
    variant: str = "auto"
    precision: PrecisionSettings = PrecisionSettings()
    offload: OffloadSettings = OffloadSettings()
    device: str = "cpu"


def describe(request: LoadRequest) -> SourceDescription:
    """Check the request's files (headers and configs only) and say what they are; refuse weights stored in a
    form no weight format reads (a GGML type the pack does not expand), naming those it reads."""
    source = request.source
    if isinstance(source, DiffusersFolder):
        _, model_index = inspect_folder(source.path)
        desc = describe_folder(source.path, model_index, request.variant)
    else:
        desc = describe_split_files(source, request.variant)
    for weights in (desc.transformer, desc.text_encoder, desc.vae):
        refuse_unread(weights)
    return desc


def compute_dtypes(request: LoadRequest) -> dict[str, torch.dtype]:
    """The dtype each component (transformer, text encoder, VAE) computes in on the request's device."""
    device = torch.device(request.device)
    return {
        part: compute_dtype(getattr(request.precision, part), device) for part in ("transformer", "text_encoder", "vae")
    }


def fp8_modes(request: LoadRequest, desc: SourceDescription) -> dict[str, str]:
    """How the transformer and the text encoder hold fp8 weights (``quant/fp8_scope.py``'s modes), from
    the precision settings and what the files store."""
    return {
        "transformer": fp8_mode(request.precision.transformer, desc.transformer),
        "text_encoder": fp8_mode(request.precision.text_encoder, desc.text_encoder),
    }
