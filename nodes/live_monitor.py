"""The live memory monitor inside ComfyUI: one sampler thread, websocket events, the runs' phases.

Events (``PromptServer.send_sync``, to every browser tab):
- ``qwenfit.memory``: a memory sample, twice a second, only while a tab is connected;
- ``qwenfit.run``: a finished run's record (phases, peaks, the plan's prediction) with the node that ran it.

``QWENFIT_LIVE_MONITOR=0`` in the server's environment keeps the thread off (nothing is sampled or sent;
the routes and the VRAMMonitor node then read memory on demand). The browser setting
"QwenFit > Live memory panel" hides the panel.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from ..optim import MemorySample, MemorySampler, PhaseMark, RunRecord, add_run_observer, remove_run_observer

log = logging.getLogger("qwenfit")
EVENT_MEMORY = "qwenfit.memory"
EVENT_RUN = "qwenfit.run"
INTERVAL_S = 0.25
PUSH_EVERY = 2  # samples per event: two events a second
SWITCH = "QWENFIT_LIVE_MONITOR"


def monitor_enabled() -> bool:
    """False when the server was started with QWENFIT_LIVE_MONITOR=0 (or off/false/no)."""
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


def sample_json(sample: MemorySample) -> dict[str, Any]:
    return {
        "t": round(sample.t, 3),
        "gpus": [
            {"index": g.index, "name": g.name, "used_bytes": g.used_bytes, "total_bytes": g.total_bytes}
            for g in sample.gpus
        ],
        "host_used_bytes": sample.host_used_bytes,
        "host_total_bytes": sample.host_total_bytes,
        "rss_bytes": sample.rss_bytes,
        "pinned_bytes": sample.pinned_bytes,
    }


def mark_json(mark: PhaseMark) -> dict[str, Any]:
    return {"t": round(mark.t, 3), "label": mark.label}


def record_json(record: RunRecord) -> dict[str, Any]:
    return {
        "model": record.model,
        "device": record.device,
        "steps": record.steps,
        "seconds_per_step": record.seconds_per_step,
        "phases": [asdict(p) for p in record.phases],
        "peak_reserved_bytes": record.peak_reserved,
        "predicted_phases": [{"name": n, "peak_bytes": b} for n, b in record.predicted_phase_peaks],
        "predicted_peak_bytes": record.predicted_peak or None,
        "job": record.job.describe() if record.job else None,
        "plan": record.plan,
    }


class LiveMonitor:
    """Owns the sampler for the server's life and tells the browser what it sees."""

    def __init__(self, server: Any, enabled: bool) -> None:
        self.server = server
        self.enabled = enabled
        self.sampler = MemorySampler(INTERVAL_S)
        self.phase: str | None = None  # the running phase of a QwenFit run, if one runs
        self.node: str | None = None  # the graph id of the node running it (its V3 hidden unique_id)
        self._count = 0

    @property
    def run_active(self) -> bool:
        return self.phase is not None

    def start(self) -> LiveMonitor:
        add_run_observer(self)
        if self.enabled:
            self.sampler.add_listener(self._push)
            self.sampler.start()
            atexit.register(self.stop)
            log.info("QwenFit live memory monitor: %s, %d samples a second", self.sampler.source, 1 / INTERVAL_S)
        return self

    def stop(self) -> None:
        remove_run_observer(self)
        self.sampler.remove_listener(self._push)
        self.sampler.stop()

    def current(self) -> MemorySample:
        """The latest sample (read now when the thread is off or has not sampled yet)."""
        latest = self.sampler.latest() if self.sampler.running else None
        return latest or self.sampler.read()

    # ---- events -------------------------------------------------------------------------
    def _clients(self) -> bool:
        return bool(getattr(self.server, "sockets", None))

    def _push(self, sample: MemorySample) -> None:
        self._count += 1
        if self._count % PUSH_EVERY and self.phase is None:
            return  # during a run every sample goes out, so phases show promptly
        if self._clients():
            self.server.send_sync(EVENT_MEMORY, {**sample_json(sample), "phase": self.phase})

    # ---- run observer (optim.monitoring.run_record) --------------------------------------------------
    def phase_started(self, name: str) -> None:
        self.phase = name
        if self.enabled:
            self.sampler.phase_started(name)

    def run_finished(self, record: RunRecord | None) -> None:
        self.phase = None
        if self.enabled:
            self.sampler.run_finished(record)
        if record is not None and self._clients():
            self.server.send_sync(EVENT_RUN, {"node": self.node, "record": record_json(record)})

    @contextmanager
    def node_running(self, node_id: str | None) -> Iterator[None]:
        """Around one run node's execution: its run events name that node."""
        self.node = node_id
        try:
            yield
        finally:
            self.node = None


_monitor: LiveMonitor | None = None


def live_monitor() -> LiveMonitor:
    """The server's monitor (started on first use)."""
    global _monitor
    if _monitor is None:
        from server import PromptServer

        _monitor = LiveMonitor(PromptServer.instance, monitor_enabled()).start()
    return _monitor
