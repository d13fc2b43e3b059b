"""A light background thread that samples GPU and host memory a few times a second.

It keeps a bounded history (``history_s`` seconds) and phase marks, so a run's memory over time can be
drawn with its phases. A reading costs microseconds (NVML, psutil): at 4 samples a second it is far
below anything a run can measure. ``stop`` joins the thread: none is left behind.

    sampler = MemorySampler(interval_s=0.25).start()
    ...                      # the work to watch; sampler.mark("denoise") at phase boundaries
    sampler.stop()
    samples, marks = sampler.samples(), sampler.marks()

A sampler is also a run observer (``optim.monitoring.run_record.add_run_observer``): every QwenFit run then marks
its phases in the history by itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from ..execution.host_arena import pinned_bytes
from .gpu_memory_readers import GpuReader, GpuReading, open_gpu_reader
from .run_record import PHASES, RunRecord

log = logging.getLogger("qwenfit")
THREAD_NAME = "qwenfit-memory-sampler"
END_OF_RUN = "end"


@dataclass(frozen=True)
class MemorySample:
    """GPU and host memory at one moment (``t`` on ``time.monotonic``'s clock)."""

    t: float
    gpus: tuple[GpuReading, ...]
    host_used_bytes: int
    host_total_bytes: int
    rss_bytes: int  # this process
    pinned_bytes: int  # host memory the pack has page-locked


@dataclass(frozen=True)
class PhaseMark:
    """A named moment in the history: a run's phase started (encode, denoise, decode) or it ended."""

    t: float
    label: str


SampleListener = Callable[[MemorySample], None]


class MemorySampler:
    """Samples memory every ``interval_s`` seconds on its own daemon thread between ``start`` and ``stop``."""

    def __init__(self, interval_s: float = 0.25, history_s: float = 600.0, reader: GpuReader | None = None) -> None:
        if not 0.01 <= interval_s <= 60:
            raise ValueError(f"interval_s={interval_s} is out of range (0.01 to 60 seconds)")
        self.interval_s = interval_s
        self._reader = reader
        self._samples: deque[MemorySample] = deque(maxlen=max(2, math.ceil(history_s / interval_s)))
        self._marks: deque[PhaseMark] = deque(maxlen=1000)
        self._listeners: list[SampleListener] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()
        self._errors = 0

    # ---- life cycle ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def source(self) -> str:
        """Where the GPU figures come from: "nvml", "torch" or "none"."""
        return self._open_reader().source

    def start(self) -> MemorySampler:
        """Start the thread (no-op when it runs); returns the sampler."""
        with self._lock:
            if self.running:
                return self
            self._open_reader()
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the thread, then release the GPU reader. The history stays readable."""
        with self._lock:
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError(f"{THREAD_NAME} did not stop within {timeout} s")
        with self._lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def __enter__(self) -> MemorySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open_reader(self) -> GpuReader:
        if self._reader is None:
            self._reader = open_gpu_reader()
        return self._reader

    def _loop(self) -> None:
        self.sample_now()
        while not self._stop.wait(self.interval_s):
            self.sample_now()

    # ---- sampling -----------------------------------------------------------------------
    def read(self) -> MemorySample:
        """One reading now, not kept in the history."""
        host = psutil.virtual_memory()
        return MemorySample(
            t=time.monotonic(),
            gpus=self._open_reader().read(),
            host_used_bytes=host.total - host.available,
            host_total_bytes=host.total,
            rss_bytes=self._process.memory_info().rss,
            pinned_bytes=pinned_bytes(),
        )

    def sample_now(self) -> MemorySample | None:
        """Take one sample into the history and tell the listeners; None when reading failed."""
        try:
            sample = self.read()
        except Exception:  # a driver hiccup must not end the monitor
            self._errors += 1
            if self._errors in (1, 100):
                log.exception("QwenFit memory sampler: reading failed (%d times so far)", self._errors)
            return None
        self._samples.append(sample)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(sample)
            except Exception:
                log.exception("QwenFit memory sampler: listener %r failed", listener)
        return sample

    def add_listener(self, listener: SampleListener) -> None:
        """Call ``listener`` with every new sample (on the sampler's thread: keep it short)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: SampleListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def mark(self, label: str) -> PhaseMark:
        """Mark this moment (a phase starts) and take a sample at it, so short phases show too."""
        mark = PhaseMark(time.monotonic(), label)
        self._marks.append(mark)
        self.sample_now()
        return mark

    # ---- history ------------------------------------------------------------------------
    def samples(self, since: float | None = None) -> list[MemorySample]:
        """The kept samples, oldest first; only those at or after ``since`` when given."""
        kept = list(self._samples)
        return kept if since is None else [s for s in kept if s.t >= since]

    def marks(self, since: float | None = None) -> list[PhaseMark]:
        kept = list(self._marks)
        return kept if since is None else [m for m in kept if m.t >= since]

    def latest(self) -> MemorySample | None:
        try:
            return self._samples[-1]
        except IndexError:
            return None

    # ---- run observer (optim.monitoring.run_record) --------------------------------------------------
    def phase_started(self, name: str) -> None:
        self.mark(name)

    def run_finished(self, record: RunRecord | None) -> None:
        self.mark(END_OF_RUN)


def last_run_window(marks: list[PhaseMark]) -> tuple[float, float | None] | None:
    """(start, end) of the most recent run in ``marks``: from its first phase mark to its end mark
    (None while it runs); None when no run is marked."""
    start = next((i for i in range(len(marks) - 1, -1, -1) if marks[i].label == PHASES[0]), None)
    if start is None:
        return None
    end = next((m.t for m in marks[start:] if m.label == END_OF_RUN), None)
    return marks[start].t, end
