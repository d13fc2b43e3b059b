"""A seven-block random transformer of each variant and its inputs, with diffusers' own forward as the
reference (the engine tests compare against it)."""

from __future__ import annotations

import torch

from optim.qwen.architectures import Architecture
from optim.qwen.variants import Variant

CPU = torch.device("cpu")


def seven_block_transformer(variant: Variant) -> torch.nn.Module:
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(7)
    config = {**Architecture("qwenfit-tiny").transformer_config(variant), "num_layers": 7}
    return QwenImageTransformer2DModel.from_config(config).eval()


def inputs(transformer: torch.nn.Module, variant: Variant):
    cfg = transformer.config
    frames = 3 if variant is Variant.LAYERED else 2
    shapes = [[(1, 4, 4)] * frames]
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(1, 16 * frames, cfg.in_channels, generator=generator)
    prompt = torch.randn(1, 7, cfg.joint_attention_dim, generator=generator)
    negative = torch.randn(1, 5, cfg.joint_attention_dim, generator=generator)
    extra = torch.tensor([1]) if cfg.use_additional_t_cond else None
    return hidden, prompt, negative, shapes, extra


def reference(transformer, hidden, text, timestep, shapes, extra):
    kwargs = {"additional_t_cond": extra} if extra is not None else {}
    out = transformer(
        hidden_states=hidden,
        encoder_hidden_states=text,
        timestep=timestep,
        img_shapes=shapes,
        return_dict=False,
        **kwargs,
    )
    return out[0]


VARIANTS = [Variant.EDIT_2509, Variant.EDIT_2511, Variant.LAYERED]
