"""Recognising what a weight file is, from its tensor names, to name the fix when it is the wrong one."""

from __future__ import annotations

# (a key that only this family has, what to call it); checked in order, after any prefix.
_SIGNATURES = (
    ("txt_norm.weight", "a Qwen-Image transformer (diffusion_models)"),
    ("model.layers.0.self_attn.k_proj.bias", "a Qwen2.5 text encoder (text_encoders)"),
    ("model.language_model.layers.0.self_attn.k_proj.bias", "a Qwen2.5 text encoder (text_encoders)"),
    ("decoder.head.0.gamma", "a Wan/Qwen-Image VAE (vae)"),
    ("decoder.norm_out.gamma", "a Wan/Qwen-Image VAE in diffusers layout (vae)"),
    ("double_blocks.0.img_attn.qkv.weight", "a Flux transformer"),
    ("joint_blocks.0.x_block.attn.qkv.weight", "a Stable Diffusion 3 model"),
    ("conditioner.embedders.0.transformer.text_model.embeddings.position_ids", "an SDXL checkpoint"),
    ("label_emb.0.0.weight", "an SDXL UNet"),
    ("input_blocks.0.0.weight", "a Stable Diffusion 1.x/2.x UNet"),
    ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "a Stable Diffusion 1.x checkpoint"),
    ("blocks.0.self_attn.q.weight", "a Wan video transformer"),
    ("text_model.encoder.layers.0.self_attn.q_proj.weight", "a CLIP text encoder"),
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "a T5 text encoder"),
    ("encoder.down.0.block.0.conv1.weight", "a Stable Diffusion / Flux VAE"),
)
_PREFIXES = ("", "model.diffusion_model.", "diffusion_model.", "model.", "first_stage_model.")


def describe_family(keys: set[str]) -> str:
    """What the file most likely is ("an SDXL checkpoint"), or "an unknown model"."""
    for marker, family in _SIGNATURES:
        if any(prefix + marker in keys for prefix in _PREFIXES):
            return family
    return "an unknown model"


def find_prefix(keys: set[str], marker: str, prefixes: tuple[str, ...] = _PREFIXES) -> str | None:
    """The prefix under which ``marker`` sits in ``keys``, or None when it is absent."""
    for prefix in prefixes:
        if prefix + marker in keys:
            return prefix
    return None
