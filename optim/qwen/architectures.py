"""Known architectures (config sets shipped in optim/configs) and building empty modules from them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from .empty_modules import build_empty
from .variants import Variant

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
ARCHITECTURES = ("qwen-image", "qwenfit-tiny")

_VARIANT_FLAGS = {
    Variant.EDIT_2509: {},
    Variant.EDIT_2511: {"zero_cond_t": True},
    Variant.LAYERED: {"use_layer3d_rope": True, "use_additional_t_cond": True},
}


@dataclass(frozen=True)
class Architecture:
    """One config set: the name and the raw config dicts."""

    name: str

    def config(self, part: str) -> dict[str, Any]:
        return _read(self.name, part)

    def transformer_config(self, variant: Variant) -> dict[str, Any]:
        cfg = {k: v for k, v in self.config("transformer").items() if not k.startswith("_")}
        return {**cfg, **_VARIANT_FLAGS[variant]}

    def vae_config(self, input_channels: int) -> dict[str, Any]:
        cfg = {k: v for k, v in self.config("vae").items() if not k.startswith("_")}
        return {**cfg, "input_channels": input_channels}


@cache
def _read(name: str, part: str) -> dict[str, Any]:
    return json.loads((CONFIG_ROOT / name / f"{part}.json").read_text())


def all_architectures() -> list[Architecture]:
    return [Architecture(n) for n in ARCHITECTURES]


def empty_transformer(arch: Architecture, variant: Variant) -> torch.nn.Module:
    """The transformer with parameters on the meta device (no memory), ready to be filled."""
    from diffusers import QwenImageTransformer2DModel

    return build_empty(lambda: QwenImageTransformer2DModel.from_config(arch.transformer_config(variant)))


def empty_vae(arch: Architecture, input_channels: int) -> torch.nn.Module:
    from diffusers import AutoencoderKLQwenImage

    return build_empty(lambda: AutoencoderKLQwenImage.from_config(arch.vae_config(input_channels)))


def empty_text_encoder(arch: Architecture) -> torch.nn.Module:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(**arch.config("text_encoder"))
    return build_empty(lambda: Qwen2_5_VLForConditionalGeneration(config))


def scheduler(arch: Architecture):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(arch.config("scheduler"))


def processor(arch: Architecture, tokenizer: Any):
    """The Qwen2-VL processor (image + video processors, as transformers 5 wants) around ``tokenizer``."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    cfg = arch.config("image_processor")
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**cfg), tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(**cfg)
    )
