"""Key names: ComfyUI's split files versus the diffusers/transformers modules we build.

Facts, checked in tests against ComfyUI's own modules at real size:
- transformer: ComfyUI's Qwen-Image module uses diffusers' names; files may carry a
  ``model.diffusion_model.`` prefix.
- text encoder: ComfyUI files use the original Qwen2.5-VL names (``model.layers.*``,
  ``visual.*``); transformers 5 nests them (``model.language_model.*``, ``model.visual.*``).
- VAE: ComfyUI files use the original Wan-VAE names (``encoder.downsamples.N.residual.*``,
  ``decoder.upsamples.N``, ``conv1``/``conv2``); diffusers groups them into blocks.
"""

from __future__ import annotations

import re

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")


# ---- text encoder -------------------------------------------------------------------------


def text_encoder_to_comfy(key: str) -> str:
    """transformers 5 module name -> original Qwen2.5-VL name, as ComfyUI files store it."""
    if key.startswith("model.visual."):
        return key[len("model.") :]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    return key


# ---- VAE ----------------------------------------------------------------------------------

_RESIDUAL = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2": "conv1",
    "residual.3.gamma": "norm2.gamma",
    "residual.6": "conv2",
    "shortcut": "conv_shortcut",
}
_HEAD = {"head.0.gamma": "norm_out.gamma", "head.2": "conv_out", "conv1": "conv_in"}
_MIDDLE = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}


def _rename_residual(rest: str) -> str:
    for old, new in _RESIDUAL.items():
        if rest.startswith(old + ".") or rest == old:
            return new + rest[len(old) :]
    return rest  # resample.*, time_conv.*


def vae_to_diffusers(key: str, num_res_blocks: int, num_levels: int) -> str:
    """Original Wan-VAE name (ComfyUI files) -> diffusers AutoencoderKLQwenImage name.

    The decoder's flat ``upsamples.N`` list holds, per level, ``num_res_blocks + 1`` residual
    blocks followed by one upsampler (none after the last level).
    """
    if key.startswith("conv1."):
        return "quant_conv." + key[len("conv1.") :]
    if key.startswith("conv2."):
        return "post_quant_conv." + key[len("conv2.") :]
    side, _, rest = key.partition(".")
    for old, new in _HEAD.items():
        if rest == old or rest.startswith(old + "."):
            return f"{side}.{new}{rest[len(old) :]}"
    match = re.match(r"middle\.(\d)\.(.*)", rest)
    if match:
        inner = match.group(2) if match.group(1) == "1" else _rename_residual(match.group(2))
        return f"{side}.{_MIDDLE[match.group(1)]}.{inner}"
    match = re.match(r"downsamples\.(\d+)\.(.*)", rest)
    if match:
        return f"{side}.down_blocks.{match.group(1)}.{_rename_residual(match.group(2))}"
    match = re.match(r"upsamples\.(\d+)\.(.*)", rest)
    if match:
        index, inner = int(match.group(1)), match.group(2)
        per_level = num_res_blocks + 2  # residual blocks + the upsampler
        level, slot = divmod(index, per_level)
        if level >= num_levels - 1:  # the last level has no upsampler
            level, slot = num_levels - 1, index - (num_levels - 1) * per_level
        if slot == num_res_blocks + 1:
            return f"{side}.up_blocks.{level}.upsamplers.0.{inner}"
        return f"{side}.up_blocks.{level}.resnets.{slot}.{_rename_residual(inner)}"
    return key
