"""Where a load's seconds went, phase by phase: the loader's report and the benchmark show it."""

from __future__ import annotations

import time


class LoadTimes:
    """Seconds per load phase, marked as each phase ends."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self.phases: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        """``phase`` ended now; it took the time since the previous mark."""
        now = time.perf_counter()
        self.phases.append((phase, now - self._last))
        self._last = now

    @property
    def total(self) -> float:
        return self._last - self._start

    def describe(self) -> str:
        parts = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.phases)
        return f"loaded in {self.total:.1f} s ({parts})"
