"""The bytes a LoRA stack adds on each GPU, from the files' headers (nothing is read but alphas)."""

from __future__ import annotations

from ..files.lora import LoraStack
from ..files.lora_factors import read_lora
from .plan import NO_LORA_PLAN, LoraLine, LoraPlan

SCALE_BYTES = 4  # one float32 scale per stacked rank row


def lora_plan(stack: LoraStack, itemsize: int) -> LoraPlan:
    """What ``stack`` adds to every GPU of a plan whose compute dtype takes ``itemsize`` bytes: each
    LoRA's factors, and one dense copy of the largest layer they change (the merge's workspace)."""
    if not stack:
        return NO_LORA_PLAN
    lines, largest = [], 0
    for choice in stack.choices:
        lora = read_lora(choice.path)
        rows = sum(layer.rank for layer in lora.layers.values())
        nbytes = lora.factor_count_on_gpu * itemsize + rows * SCALE_BYTES
        lines.append(LoraLine(choice.name, choice.strength, lora.rank, nbytes))
        largest = max(largest, lora.largest_layer)
    return LoraPlan(tuple(lines), largest * itemsize)
