"""The fastest rung's step cache: some denoising steps skip the transformer, their output extrapolated.

The transformer's output (the velocity) changes smoothly along the sampler's timesteps, so a step may
reuse the last two computed outputs: ``v(t) ~= v(t1) + (t - t1) * (v(t1) - v(t0)) / (t1 - t0)`` (a
first-order Taylor step, as TaylorSeer does for features; here on the output, so a skipped step runs
no block, streams no weight and composes with every engine path: batched, interleaved, two calls,
CFG-parallel). The schedule is fixed, so its speed is known before the run: the first ``CACHE_WARMUP``
steps and the last one compute, in between one in ``CACHE_INTERVAL``. Each text input (prompt, negative
prompt) keeps its own history. Never on by default: the user picks the ``fastest`` rung, and the
benchmark reports its deviation next to its speed.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from ..planning.step_time import CACHE_INTERVAL, CACHE_WARMUP, cache_schedule


@dataclass
class _History:
    points: list[tuple[float, torch.Tensor]] = field(default_factory=list)  # (timestep, output), last two


class StepCache:
    """Decides per step whether the transformer runs, keeps the outputs it needs and extrapolates."""

    def __init__(self) -> None:
        self._histories: dict[Hashable, _History] = {}
        self.computed = 0
        self.predicted = 0

    def clear(self) -> None:
        """Forget every output (a new run)."""
        self._histories.clear()
        self.computed = self.predicted = 0

    def skips(self, step: int, steps: int, keys: list[Hashable]) -> bool:
        """True when ``step`` of ``steps`` is predicted for every one of ``keys`` (each has two outputs)."""
        if step in cache_schedule(steps):
            return False
        return all(len(self._histories.get(key, _History()).points) == 2 for key in keys)

    def keep(self, key: Hashable, timestep: float, output: torch.Tensor) -> None:
        """Remember a computed output (the last two per key are kept)."""
        history = self._histories.setdefault(key, _History())
        history.points = [*history.points[-1:], (timestep, output)]
        self.computed += 1

    def predict(self, key: Hashable, timestep: float) -> torch.Tensor:
        """The output at ``timestep`` extrapolated from the last two computed ones."""
        (t0, v0), (t1, v1) = self._histories[key].points
        self.predicted += 1
        if t1 == t0:
            return v1.clone()
        return v1 + (v1 - v0) * ((timestep - t1) / (t1 - t0))

    def summary(self) -> str:
        """What the cache did in the last run."""
        total = self.computed + self.predicted
        return (
            f"step cache: {self.predicted} of {total} transformer outputs extrapolated (first-order, from the last "
            f"two computed; the first {CACHE_WARMUP} steps, then one step in {CACHE_INTERVAL} and the last computed)"
        )
