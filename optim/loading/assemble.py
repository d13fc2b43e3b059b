"""Build the three models from weight sources, bounded in memory, in the planned dtypes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..files.file_tensors import FileFeeds
from ..files.weight_source import WeightSource
from ..quant.fp8_scope import fp8_filter
from ..qwen.architectures import Architecture, empty_text_encoder, empty_transformer, empty_vae
from ..qwen.empty_modules import build_empty
from ..qwen.variants import Variant
from .fill import KeepInFiles, fill_module

LM_HEAD = "lm_head.weight"


def build_transformer(
    source: WeightSource,
    arch: Architecture | None,
    config: dict[str, Any] | None,
    variant: Variant,
    dtype: torch.dtype,
    device: torch.device,
    fp8: str,
    keep_in_files: KeepInFiles | None = None,
    feeds: FileFeeds | None = None,
) -> nn.Module:
    """The transformer from ``arch`` (split files) or a folder's ``config``, filled from ``source``."""
    from diffusers import QwenImageTransformer2DModel

    if config is not None:
        module = build_empty(lambda: QwenImageTransformer2DModel.from_config(config))
    else:
        module = empty_transformer(arch, variant)
    fill_module(
        module,
        source,
        dtype,
        device,
        fp8_linears=fp8_filter(fp8, "transformer", source),
        keep_in_files=keep_in_files,
        feeds=feeds,
    )
    return module.to(device)


def build_vae(
    source: WeightSource,
    arch: Architecture | None,
    config: dict[str, Any] | None,
    input_channels: int,
    dtype: torch.dtype,
    device: torch.device,
) -> nn.Module:
    from diffusers import AutoencoderKLQwenImage

    if config is not None:
        module = build_empty(lambda: AutoencoderKLQwenImage.from_config(config))
    else:
        module = empty_vae(arch, input_channels)
    fill_module(module, source, dtype, device)
    return module.to(device)


class _MissingLmHead(nn.Module):
    """Stands in for an lm_head the file does not carry: editing never needs it, captioning does."""

    def forward(self, *_: Any, **__: Any) -> torch.Tensor:
        from ..errors import QwenFitError

        raise QwenFitError(
            "this text encoder file has no lm_head, which the Layered auto-caption needs: "
            "write a prompt, or use the full qwen_2.5_vl_7b text encoder file."
        )


def build_text_encoder(
    source: WeightSource,
    arch: Architecture | None,
    config: Any | None,
    dtype: torch.dtype,
    device: torch.device,
    fp8: str,
    keep_in_files: KeepInFiles | None = None,
    feeds: FileFeeds | None = None,
) -> nn.Module:
    from transformers import Qwen2_5_VLForConditionalGeneration

    if config is not None:
        module = build_empty(lambda: Qwen2_5_VLForConditionalGeneration(config))
    else:
        module = empty_text_encoder(arch)
    missing = fill_module(
        module,
        source,
        dtype,
        device,
        fp8_linears=fp8_filter(fp8, "text_encoder", source),
        optional=(LM_HEAD,),
        keep_in_files=keep_in_files,
        feeds=feeds,
    )
    if LM_HEAD in missing:
        module.lm_head = _MissingLmHead()
    return module.to(device)
