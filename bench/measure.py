"""Measuring one whole generation: wall seconds and peak GPU memory per phase, host memory, latents.

Phases: ``encode`` (prompt encoding and VAE encoding of the references, until the first transformer
call), ``denoise`` (until the last step's ``callback_on_step_end``), ``decode`` (VAE decode and
post-processing, until the pipeline returns). Each phase ends after ``torch.cuda.synchronize()``, and
the CUDA peak counters are reset between phases, so each phase reports its own peak. Without CUDA the
GPU figures are None.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

PHASES = ("encode", "denoise", "decode")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class PhaseStats:
    """One phase: wall seconds and the CUDA caching allocator's peaks during it (bytes, None on CPU)."""

    name: str
    seconds: float
    peak_reserved_bytes: int | None
    peak_allocated_bytes: int | None


@dataclass
class Measurement:
    """Everything measured in one generation. ``final_latents`` (packed, float32, on the CPU) is kept out
    of ``to_json``."""

    steps: int
    phases: dict[str, PhaseStats]
    total_seconds: float
    step_end_seconds: list[float]  # since the start of denoising, one per step
    host_rss_peak_bytes: int | None
    host_rss_after_bytes: int | None
    host_rss_before_bytes: int | None
    pinned_bytes: int | None
    pinned_allocator_bytes: int | None  # torch's pinned host allocator, measured (rounded blocks, cached too)
    denoise_start_seen: bool = True  # False: the transformer pre-hook never fired, encode ran to step 1's end
    final_latents: torch.Tensor | None = field(default=None, repr=False)

    @property
    def denoise_seconds(self) -> float | None:
        phase = self.phases.get("denoise")
        return phase.seconds if phase else None

    @property
    def seconds_per_step(self) -> float | None:
        """Denoise seconds over all steps (the first step included)."""
        if self.denoise_seconds is None or not self.steps or not self.denoise_start_seen:
            return None
        return self.denoise_seconds / self.steps

    @property
    def seconds_per_step_steady(self) -> float | None:
        """Seconds per step without the first step (warm-up, prefetch tracing), when steps >= 3."""
        ends = self.step_end_seconds
        if self.steps < 3 or len(ends) < self.steps:
            return None
        return (ends[-1] - ends[0]) / (self.steps - 1)

    @property
    def peak_reserved_bytes(self) -> int | None:
        """Peak reserved over the whole generation (the largest phase peak)."""
        peaks = [p.peak_reserved_bytes for p in self.phases.values() if p.peak_reserved_bytes is not None]
        return max(peaks) if peaks else None

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "final_latents"}
        data["phases"] = {name: asdict(p) for name, p in self.phases.items()}
        data["step_end_seconds"] = list(self.step_end_seconds)
        data.update(
            denoise_seconds=self.denoise_seconds,
            seconds_per_step=self.seconds_per_step,
            seconds_per_step_steady=self.seconds_per_step_steady,
            peak_reserved_bytes=self.peak_reserved_bytes,
        )
        return data


def host_rss() -> tuple[int | None, int | None]:
    """(peak, current) resident set size of this process in bytes, from /proc (None elsewhere)."""
    try:
        fields = dict(line.split(":", 1) for line in _STATUS.read_text().splitlines() if ":" in line)
    except OSError:
        return None, None

    def kib(key: str) -> int | None:
        value = fields.get(key, "").split()
        return int(value[0]) * 1024 if value else None

    return kib("VmHWM"), kib("VmRSS")


def reset_host_rss_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def pinned_allocator_bytes() -> int | None:
    """Bytes held by torch's pinned host allocator (``pin_memory()`` tensors, rounded up to powers of
    two, cached blocks included); None without CUDA or on a torch without the statistic."""
    if not torch.cuda.is_available() or not hasattr(torch.cuda, "host_memory_stats"):
        return None
    try:
        return int(torch.cuda.host_memory_stats().get("allocated_bytes.current", 0))
    except RuntimeError:
        return None


class PhaseMeter:
    """Times the phases of one pipeline call and records the peaks.

    Use::

        meter = PhaseMeter(device, steps, configuration.pinned_bytes)
        with meter.measuring(pipeline.transformer):
            pipeline(..., callback_on_step_end=meter.on_step_end)
        measurement = meter.result

    ``pinned_bytes`` returns the host bytes the configuration pinned (or None); it is called at the
    end of the run, before the configuration is released.
    """

    def __init__(
        self,
        device: torch.device | str,
        steps: int,
        pinned_bytes: Callable[[], int | None] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.steps = steps
        self._pinned_bytes = pinned_bytes
        self.result: Measurement | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._phases: dict[str, PhaseStats] = {}
        self._current: str | None = None
        self._phase_start = self._run_start = 0.0
        self._step_ends: list[float] = []
        self._latents: torch.Tensor | None = None
        self._rss_before: int | None = None
        self._start_seen = True

    def _sync_and_reset_peaks(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def _close_phase(self, following: str | None) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            reserved: int | None = torch.cuda.max_memory_reserved(self.device)
            allocated: int | None = torch.cuda.max_memory_allocated(self.device)
        else:
            reserved = allocated = None
        now = time.perf_counter()
        if self._current is not None:
            self._phases[self._current] = PhaseStats(self._current, now - self._phase_start, reserved, allocated)
        self._current, self._phase_start = following, now
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        return now

    def start(self) -> None:
        """Call right before the pipeline call."""
        self._reset_state()
        self._rss_before = host_rss()[1]
        reset_host_rss_peak()
        self._sync_and_reset_peaks()
        self._run_start = self._phase_start = time.perf_counter()
        self._current = "encode"

    def _on_transformer_call(self, *_: Any) -> None:
        # Forward pre-hook: the first transformer call ends the encode phase.
        if self._current == "encode":
            self._close_phase("denoise")

    def on_step_end(self, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict:
        """``callback_on_step_end`` of the pipeline: times each step, keeps the last step's latents."""
        total = getattr(pipeline, "_num_timesteps", None) or self.steps
        if self._current == "encode":
            # The transformer was never called as a module (a configuration that runs its blocks
            # itself): the first step is lost to "encode"; the steady s/step stays right.
            self._close_phase("denoise")
            self._start_seen = False
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self._step_ends.append(time.perf_counter() - self._phase_start)
        if step == total - 1 and self._current == "denoise":
            self._close_phase("decode")
            latents = callback_kwargs.get("latents")
            if latents is not None:
                self._latents = latents.detach().to("cpu", torch.float32).clone()
        return callback_kwargs

    def finish(self) -> Measurement:
        """Call right after the pipeline returns."""
        end = self._close_phase(None)
        peak, after = host_rss()
        self.result = Measurement(
            steps=self.steps,
            phases=dict(self._phases),
            total_seconds=end - self._run_start,
            step_end_seconds=list(self._step_ends),
            host_rss_peak_bytes=peak,
            host_rss_after_bytes=after,
            host_rss_before_bytes=self._rss_before,
            pinned_bytes=self._pinned_bytes() if self._pinned_bytes else None,
            pinned_allocator_bytes=pinned_allocator_bytes(),
            denoise_start_seen=self._start_seen,
            final_latents=self._latents,
        )
        return self.result

    def measuring(self, transformer: torch.nn.Module) -> _Measuring:
        """Context manager: hooks the transformer, starts the meter, finishes it on a clean exit."""
        return _Measuring(self, transformer)


class _Measuring:
    def __init__(self, meter: PhaseMeter, transformer: torch.nn.Module) -> None:
        self.meter, self.transformer = meter, transformer
        self._handle: Any = None

    def __enter__(self) -> PhaseMeter:
        # A torch pre-hook runs in __call__, before any diffusers hook that wraps forward.
        self._handle = self.transformer.register_forward_pre_hook(self.meter._on_transformer_call)
        self.meter.start()
        return self.meter

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self._handle.remove()
        if exc_type is None:
            self.meter.finish()
