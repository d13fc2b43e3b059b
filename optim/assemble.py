"""Build the three models from weight sources, bounded in memory, in the planned dtypes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .architectures import Architecture, empty_text_encoder, empty_transformer, empty_vae
from .lora import LoraChoice, read_lora_deltas
from .variants import Variant
from .weights.fill import KeepInFiles, fill_module
from .weights.source import WeightSource

LM_HEAD = "lm_head.weight"

# How a component's Linear weights are stored: dense, fp8 as the file stores them (layers the
# file left dense stay dense, as in ComfyUI), or fp8 for every block Linear (quantized on load).
FP8_NONE, FP8_AS_STORED, FP8_ALL = "none", "as_stored", "all"


def _fp8_filter(mode: str, scope, source: WeightSource):
    if mode == FP8_NONE:
        return None
    if mode == FP8_AS_STORED:
        return lambda name: scope(name) and source.has(f"{name}.weight") and source.is_fp8(f"{name}.weight")
    return scope


def is_modulation_key(key: str) -> bool:
    """A tensor of a block's timestep modulation (``transformer_blocks.N.img_mod.1.weight``)."""
    return key.startswith("transformer_blocks.") and (".img_mod." in key or ".txt_mod." in key)


def is_text_unit_key(key: str) -> bool:
    """A tensor of a vision block or a language layer of Qwen2.5-VL (the units that stream)."""
    return ".visual.blocks." in f".{key}" or ".language_model.layers." in f".{key}"


def transformer_fp8_filter(name: str) -> bool:
    """Which transformer Linears are stored in fp8: those inside the 60 blocks (99% of the weights)."""
    return name.startswith("transformer_blocks.")


def text_encoder_fp8_filter(name: str) -> bool:
    """The language model's block Linears; the vision tower and lm_head stay in the compute dtype."""
    return ".layers." in name and "visual" not in name


def build_transformer(
    source: WeightSource,
    arch: Architecture | None,
    config: dict[str, Any] | None,
    variant: Variant,
    dtype: torch.dtype,
    device: torch.device,
    fp8: str,
    lora: LoraChoice | None = None,
    keep_in_files: KeepInFiles | None = None,
) -> nn.Module:
    """The transformer from ``arch`` (split files) or a folder's ``config``, filled from ``source``."""
    from accelerate import init_empty_weights
    from diffusers import QwenImageTransformer2DModel

    if config is not None:
        with init_empty_weights():
            module = QwenImageTransformer2DModel.from_config(config).eval()
    else:
        module = empty_transformer(arch, variant)
    deltas = None
    if lora is not None:
        linears = {name for name, m in module.named_modules() if isinstance(m, nn.Linear)}
        deltas = read_lora_deltas(lora, linears)
    fill_module(
        module,
        source,
        dtype,
        device,
        fp8_linears=_fp8_filter(fp8, transformer_fp8_filter, source),
        deltas=deltas,
        keep_in_files=keep_in_files,
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
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLQwenImage

    if config is not None:
        with init_empty_weights():
            module = AutoencoderKLQwenImage.from_config(config).eval()
    else:
        module = empty_vae(arch, input_channels)
    fill_module(module, source, dtype, device)
    return module.to(device)


class _MissingLmHead(nn.Module):
    """Stands in for an lm_head the file does not carry: editing never needs it, captioning does."""

    def forward(self, *_: Any, **__: Any) -> torch.Tensor:
        from .errors import QwenFitError

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
) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import Qwen2_5_VLForConditionalGeneration

    if config is not None:
        with init_empty_weights():
            module = Qwen2_5_VLForConditionalGeneration(config).eval()
    else:
        module = empty_text_encoder(arch)
    missing = fill_module(
        module,
        source,
        dtype,
        device,
        fp8_linears=_fp8_filter(fp8, text_encoder_fp8_filter, source),
        optional=(LM_HEAD,),
        keep_in_files=keep_in_files,
    )
    if LM_HEAD in missing:
        module.lm_head = _MissingLmHead()
    return module.to(device)
