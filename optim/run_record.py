"""What the last generation did: seconds and peak GPU memory per phase, seconds per step, its plan.

Phases: ``encode`` (prompt and references, until the first denoising call), ``denoise`` (until the
last step ends), ``decode`` (the VAE). The VRAM monitor reports the last record.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

GIB = 1024**3
PHASES = ("encode", "denoise", "decode")


@dataclass(frozen=True)
class PhaseStat:
    name: str
    seconds: float
    peak_allocated: int  # bytes; 0 without a GPU
    peak_reserved: int


@dataclass(frozen=True)
class RunRecord:
    model: str
    steps: int
    phases: tuple[PhaseStat, ...]
    plan: str

    @property
    def seconds_per_step(self) -> float:
        denoise = next((p.seconds for p in self.phases if p.name == "denoise"), 0.0)
        return denoise / self.steps if self.steps else 0.0

    def describe(self) -> str:
        parts = []
        for p in self.phases:
            peak = (
                f", peak {p.peak_allocated / GIB:.2f} GiB ({p.peak_reserved / GIB:.2f} reserved)"
                if p.peak_reserved
                else ""
            )
            parts.append(f"{p.name} {p.seconds:.2f} s{peak}")
        return f"last run ({self.model}): " + "; ".join(parts) + f"; {self.seconds_per_step:.3f} s/step"


class PhaseTracker:
    """Times the phases of one pipeline call and reads the GPU's peak memory in each."""

    def __init__(self, device: torch.device, steps: int, model: str, plan: str) -> None:
        self.cuda = device.type == "cuda"
        self.device, self.steps, self.model, self.plan = device, steps, model, plan
        self.phases: list[PhaseStat] = []
        self._current: str | None = PHASES[0]
        self._start = time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def _close(self, following: str | None) -> None:
        if self._current is None:
            return
        if self.cuda:
            torch.cuda.synchronize(self.device)
            allocated = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
        else:
            allocated = reserved = 0
        now = time.perf_counter()
        self.phases.append(PhaseStat(self._current, now - self._start, allocated, reserved))
        self._current, self._start = following, now
        self._reset()

    def denoising_starts(self, *_: Any) -> None:
        """Forward pre-hook of the transformer: the first call ends the encode phase."""
        if self._current == "encode":
            self._close("denoise")

    def step_done(self, done: int, total: int) -> None:
        if done == total and self._current == "denoise":
            self._close("decode")

    def finish(self) -> RunRecord:
        self._close(None)
        record = RunRecord(self.model, self.steps, tuple(self.phases), self.plan)
        remember(record)
        return record


_lock = threading.Lock()
_last: RunRecord | None = None


def remember(record: RunRecord) -> None:
    global _last
    with _lock:
        _last = record


def last_run() -> RunRecord | None:
    """The record of the most recent generation in this process, if any."""
    with _lock:
        return _last
