"""LoRA choices: a file with a strength, and the stack of them a run applies.

The stack is a value (immutable, hashable) that a pipeline view carries: choosing, re-weighting or
removing a LoRA makes another view of the same loaded weights, never a new load. Reading the files
is optim/files/lora_factors.py; applying them as each layer runs is optim/quant/low_rank.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import QwenFitError

# The scheduler the Lightning distillation was trained with, and that CFG is off.
LIGHTNING_SHIFT = math.log(3)
# The nodes' widget range; beyond it a LoRA swamps the model's own weights.
MAX_STRENGTH = 4.0


@dataclass(frozen=True)
class LoraChoice:
    """A LoRA file and its strength (hashable)."""

    path: Path
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.strength) or abs(self.strength) > MAX_STRENGTH:
            raise QwenFitError(
                f"lora_strength={self.strength} for {self.path.name} is not usable; use -{MAX_STRENGTH:g} to "
                f"{MAX_STRENGTH:g} (1 is the LoRA's full effect)."
            )

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_lightning(self) -> bool:
        return "lightning" in self.path.name.lower()

    @property
    def lightning_steps(self) -> int | None:
        match = re.search(r"(\d+)[-_ ]?steps?", self.path.name.lower())
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class LoraStack:
    """The LoRAs a run applies, in the order they were added (at most one Lightning LoRA)."""

    choices: tuple[LoraChoice, ...] = ()

    def __post_init__(self) -> None:
        lightning = [c.name for c in self.choices if c.is_lightning]
        if len(lightning) > 1:
            raise QwenFitError(
                f"two Lightning LoRAs in one stack ({' and '.join(lightning)}): each was distilled for its own "
                "schedule and they do not add up. Keep one of them (remove the other QwenFit LoRA node, or set "
                "the loader's lora to none)."
            )

    def plus(self, choice: LoraChoice) -> LoraStack:
        """This stack with ``choice`` added on top (a strength of 0 leaves it out: it would change nothing)."""
        return self if choice.strength == 0 else LoraStack((*self.choices, choice))

    @property
    def lightning(self) -> LoraChoice | None:
        """The Lightning LoRA of the stack, if any (its runs use its scheduler and CFG off)."""
        return next((c for c in self.choices if c.is_lightning), None)

    def describe(self) -> str:
        return ", ".join(f"{c.name} x{c.strength:g}" for c in self.choices) or "none"

    def __bool__(self) -> bool:
        return bool(self.choices)


NO_LORAS = LoraStack()


def lightning_scheduler_config(config: dict) -> dict:
    """The scheduler settings Lightning LoRAs need: no shift range (log 3 both ends), no terminal shift."""
    return {**config, "base_shift": LIGHTNING_SHIFT, "max_shift": LIGHTNING_SHIFT, "shift_terminal": None}
