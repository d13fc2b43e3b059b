"""Batched CFG: run the conditional and unconditional passes of a step as one forward.

diffusers' pipelines call the transformer twice per step (prompt, then negative prompt) with the
same latents. When weights stream, every call moves them across PCIe again. The engine knows both
text inputs ahead (the prompt encoder hands them out), so on the first call it computes both
samples at once, returns the first and keeps the second for the call that follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextInput:
    """One sample's text stream: embeddings [1, L, C] and an optional mask [1, L]."""

    embeds: torch.Tensor
    mask: torch.Tensor | None


class CfgPairing:
    """Remembers which prompt embeddings pair with which negative ones, and the kept second result."""

    def __init__(self) -> None:
        self._pairs: list[tuple[TextInput, TextInput]] = []
        self._kept: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.batched_calls = 0

    def clear(self) -> None:
        self._pairs.clear()
        self._kept = None

    def pair(self, cond: TextInput, uncond: TextInput) -> None:
        self._pairs.append((cond, uncond))

    def partner(self, embeds: torch.Tensor) -> TextInput | None:
        """The negative prompt's text input when ``embeds`` is a paired prompt (identity, not value)."""
        for cond, uncond in self._pairs:
            if cond.embeds is embeds:
                return uncond
        return None

    def keep(self, hidden_states: torch.Tensor, embeds: torch.Tensor, result: torch.Tensor) -> None:
        self._kept = (hidden_states, embeds, result)
        self.batched_calls += 1

    def take(self, hidden_states: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor | None:
        """The kept result if this call is exactly the one it was computed for (same latents, same text)."""
        kept, self._kept = self._kept, None
        if kept is not None and kept[0] is hidden_states and kept[1] is embeds:
            return kept[2]
        return None
