"""What the last generation did: seconds and peak GPU memory per phase, seconds per step, its plan.

Phases: ``encode`` (prompt and references, until the first denoising call), ``denoise`` (until the
last step ends), ``decode`` (the VAE). The VRAM monitor reports the last record.

Observers (``add_run_observer``) hear each phase start and each finished record: the live memory
monitor marks its samples with them. An observer's error is logged, never raised into the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..qwen.job_shape import JobShape

log = logging.getLogger("qwenfit")

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
    job: JobShape | None = None
    # The planner's prediction for this run, per phase (bytes); empty when no planner placed it.
    predicted_phase_peaks: tuple[tuple[str, int], ...] = ()
    device: str = "cpu"

    @property
    def peak_reserved(self) -> int:
        """The largest reserved peak of all phases (bytes; 0 without a GPU)."""
        return max((p.peak_reserved for p in self.phases), default=0)

    @property
    def predicted_peak(self) -> int:
        return max((peak for _, peak in self.predicted_phase_peaks), default=0)

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

    def __init__(
        self,
        device: torch.device,
        steps: int,
        model: str,
        plan: str,
        job: JobShape | None = None,
        predicted_phase_peaks: tuple[tuple[str, int], ...] = (),
        checkpoint: Callable[[str], None] | None = None,
        afterwards: Callable[[], str] | None = None,
    ) -> None:
        self.checkpoint = checkpoint  # called as denoise and decode start; raising cancels the run
        self.afterwards = afterwards  # what the run did beyond its plan (the step cache), added to the plan text
        self.cuda = device.type == "cuda"
        self.device, self.steps, self.model, self.plan = device, steps, model, plan
        self.job, self.predicted_phase_peaks = job, predicted_phase_peaks
        self.finished = False
        self.phases: list[PhaseStat] = []
        self._current: str | None = PHASES[0]
        self._start = time.perf_counter()
        self._reset()
        _notify("phase_started", PHASES[0])

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
        if following is not None:
            _notify("phase_started", following)
            if self.checkpoint is not None:
                self.checkpoint(following)

    @property
    def current_phase(self) -> str | None:
        """The phase under way (encode, denoise, decode), None once finished."""
        return self._current

    def denoising_starts(self, *_: Any) -> None:
        """Forward pre-hook of the transformer: the first call ends the encode phase."""
        if self._current == "encode":
            self._close("denoise")

    def step_done(self, done: int, total: int) -> None:
        if done == total and self._current == "denoise":
            self._close("decode")

    def finish(self) -> RunRecord:
        self._close(None)
        extra = self.afterwards() if self.afterwards is not None else ""
        plan = f"{self.plan}\n  {extra}" if extra else self.plan
        record = RunRecord(
            self.model,
            self.steps,
            tuple(self.phases),
            plan,
            job=self.job,
            predicted_phase_peaks=self.predicted_phase_peaks,
            device=str(self.device),
        )
        self.finished = True
        remember(record)
        _notify("run_finished", record)
        return record

    def abandon(self) -> None:
        """The run stopped early (an error, Cancel): observers hear that it ended without a record."""
        if not self.finished:
            self.finished = True
            _notify("run_finished", None)


class RunObserver(Protocol):
    """Hears the phases of every run in this process (e.g. a memory sampler marking its history)."""

    def phase_started(self, name: str) -> None: ...

    def run_finished(self, record: RunRecord | None) -> None:
        """``record`` is None when the run stopped early."""


_lock = threading.Lock()
_observers: list[RunObserver] = []


def add_run_observer(observer: RunObserver) -> None:
    """Call ``observer`` at each phase start and with each finished record, until removed."""
    with _lock:
        if observer not in _observers:
            _observers.append(observer)


def remove_run_observer(observer: RunObserver) -> None:
    """Stop telling ``observer`` about runs (nothing when it was not added)."""
    with _lock:
        if observer in _observers:
            _observers.remove(observer)


def _notify(method: str, argument: Any) -> None:
    with _lock:
        observers = list(_observers)
    for observer in observers:
        try:
            getattr(observer, method)(argument)
        except Exception:  # a monitor must never break a generation
            log.exception("QwenFit run observer %r failed in %s", observer, method)


_last: RunRecord | None = None


def remember(record: RunRecord) -> None:
    global _last
    with _lock:
        _last = record


def last_run() -> RunRecord | None:
    """The record of the most recent generation in this process, if any."""
    with _lock:
        return _last
