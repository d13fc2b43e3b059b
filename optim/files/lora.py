"""LoRA files (kohya, diffusers/PEFT and ComfyUI key styles), merged into the weights at load time.

Merging while loading costs nothing per step and works for fp8 storage too: the LoRA is added to
the dense weight, which is then stored in the planned dtype (requantized when fp8).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import QwenFitError
from .safetensors_file import SafetensorsFile

# Prefixes the formats put before the transformer's own module names.
_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.", "model.diffusion_model.")
_KOHYA = re.compile(r"^lora_unet_(.+)\.(lora_down|lora_up)\.weight$")
_DOTTED = re.compile(r"^(.+)\.(lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$")

# The scheduler the Lightning distillation was trained with, and that CFG is off.
LIGHTNING_SHIFT = math.log(3)


# The loader's widget range; beyond it a merged LoRA swamps the model's own weights.
MAX_STRENGTH = 4.0


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA file and its strength, as part of a load request (hashable)."""

    path: Path
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.strength) or abs(self.strength) > MAX_STRENGTH:
            raise QwenFitError(
                f"lora_strength={self.strength} is not usable; use -{MAX_STRENGTH:g} to {MAX_STRENGTH:g} "
                "(1 is the LoRA's full effect)."
            )

    @property
    def is_lightning(self) -> bool:
        return "lightning" in self.path.name.lower()

    @property
    def lightning_steps(self) -> int | None:
        match = re.search(r"(\d+)[-_ ]?steps?", self.path.name.lower())
        return int(match.group(1)) if match else None


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def read_lora_deltas(choice: LoraChoice, linear_names: set[str]) -> dict[str, torch.Tensor]:
    """{Linear module name: float32 weight delta} for every layer the file touches.

    kohya names (``lora_unet_transformer_blocks_0_attn_to_q``) are matched to the model's dotted
    names; a file that touches none of them is refused (it is for another model).
    """
    file = SafetensorsFile(choice.path)
    underscored = {name.replace(".", "_"): name for name in linear_names}
    pairs: dict[str, dict[str, str]] = {}
    for key in file.keys():
        kohya = _KOHYA.match(key)
        dotted = _DOTTED.match(key)
        if kohya:
            layer = underscored.get(kohya.group(1))
            role = "down" if kohya.group(2) == "lora_down" else "up"
            alpha_key = key.split(".")[0] + ".alpha"
        elif dotted:
            layer = _strip(dotted.group(1))
            role = "down" if dotted.group(2) in ("lora_A", "lora_down") else "up"
            alpha_key = dotted.group(1) + ".alpha"
        else:
            continue
        if layer is None or layer not in linear_names:
            continue
        entry = pairs.setdefault(layer, {})
        entry[role] = key
        if alpha_key in file.tensors:
            entry["alpha"] = alpha_key
    complete = {k: v for k, v in pairs.items() if "down" in v and "up" in v}
    if not complete:
        raise QwenFitError(
            f"{choice.path.name} changes no layer of this Qwen-Image transformer: it is a LoRA for another "
            "model (or not a LoRA). Pick a Qwen-Image-Edit / Layered LoRA, or set lora to none."
        )
    deltas = {}
    for layer, keys in complete.items():
        down = file.read(keys["down"]).float()
        up = file.read(keys["up"]).float()
        rank = down.shape[0]
        alpha = float(file.read(keys["alpha"]).float().item()) if "alpha" in keys else float(rank)
        deltas[layer] = (up @ down) * (choice.strength * alpha / rank)
    return deltas


def lightning_scheduler_config(config: dict) -> dict:
    """The scheduler settings Lightning LoRAs need: no shift range (log 3 both ends), no terminal shift."""
    return {**config, "base_shift": LIGHTNING_SHIFT, "max_shift": LIGHTNING_SHIFT, "shift_terminal": None}
