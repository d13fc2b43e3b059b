"""Where things are inside the Qwen-Image models: the one copy of every key and module predicate.

The key predicates answer for both key spaces they meet: the modules' names (diffusers' and
transformers 5's: ``transformer_blocks.7.img_mod.1.weight``, ``model.language_model.layers.3.mlp...``) and
the files' names (ComfyUI's ``model.diffusion_model.`` prefix, the original Qwen2.5-VL layout
``model.layers.3.mlp...``), so the loader and the host-memory estimate from the headers share one rule.
Every layer that asks "is this the modulation?", "is this a text unit?" or "is this a block Linear?"
asks here.
"""

from __future__ import annotations

import re

from torch import nn

# A block's timestep modulation: Linear(3072, 18432) per stream, a third of the transformer's weights.
MODULATION_LAYERS = ("img_mod", "txt_mod")
TRANSFORMER_BLOCKS = "transformer_blocks."


def is_modulation(name: str) -> bool:
    """A tensor name relative to one block (``img_mod.1.weight``) inside its modulation layers."""
    return name.split(".", 1)[0] in MODULATION_LAYERS


def is_modulation_key(key: str) -> bool:
    """A transformer key (``[prefix.]transformer_blocks.N.img_mod.1.weight``) of a block's modulation."""
    return is_transformer_block_key(key) and any(f".{layer}." in key for layer in MODULATION_LAYERS)


def is_modulation_layer(name: str) -> bool:
    """A transformer block's modulation Linear, by dotted (``transformer_blocks.3.img_mod.1``) or kohya
    underscored (``transformer_blocks_3_img_mod_1``) name."""
    return any(re.search(rf"(^|[._]){layer}([._]|$)", name) for layer in MODULATION_LAYERS)


def is_transformer_block_key(name: str) -> bool:
    """Inside one of the 60 repeated blocks (99% of the transformer's weights)."""
    return name.startswith(TRANSFORMER_BLOCKS) or f".{TRANSFORMER_BLOCKS}" in f".{name}"


def is_text_unit_key(key: str) -> bool:
    """A text-encoder key of a vision block or a language layer of Qwen2.5-VL (the units that stream):
    ``[model.]visual.blocks.N...`` or ``model.[language_model.]layers.N...``."""
    return ".visual.blocks." in f".{key}" or ".layers." in f".{key}"


def is_language_block_linear(name: str) -> bool:
    """A Linear of the language model's layers; the vision tower and lm_head are not."""
    return ".layers." in name and "visual" not in name


def text_units(text_encoder: nn.Module) -> list[nn.Module]:
    """The repeated units of Qwen2.5-VL that stream: vision blocks, then language layers (run order)."""
    inner = text_encoder.model
    return [*inner.visual.blocks, *inner.language_model.layers]


def text_host_modules(text_encoder: nn.Module) -> list[nn.Module]:
    """Large, cheap-to-skip parts: the token embedding (a lookup) and lm_head (only for captions)."""
    return [text_encoder.model.language_model.embed_tokens, text_encoder.lm_head]
