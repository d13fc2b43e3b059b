"""VRAMMonitor: pass anything through; report memory now and the last run, and draw the run's memory."""

from __future__ import annotations

import time

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..optim import draw_run_chart, last_run, last_run_window, monitor_report
from .live_monitor import SWITCH, live_monitor
from .types import CATEGORY

RECENT_S = 60.0  # what the chart shows before any run


def _chart() -> torch.Tensor:
    """The last run's memory over time (or the last minute before any run) as an IMAGE [1, H, W, 3]."""
    monitor = live_monitor()
    sampler = monitor.sampler
    if not sampler.running:
        image = draw_run_chart([], [], None, title=f"Live monitor off ({SWITCH}=0): no history to draw")
    else:
        window = last_run_window(sampler.marks())
        record = last_run()
        if window is not None and record is not None:
            start, end = window
            end = end if end is not None else time.monotonic()
            samples = [s for s in sampler.samples(start) if s.t <= end + sampler.interval_s]
            image = draw_run_chart(samples, sampler.marks(start), record, window=(start, end))
        else:
            now = time.monotonic()
            image = draw_run_chart(sampler.samples(now - RECENT_S), [], None, title="Memory, last minute (no run yet)")
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).unsqueeze(0)


class VRAMMonitor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitVRAMMonitor",
            display_name="QwenFit VRAM Monitor",
            category=CATEGORY,
            description="Passes its input through unchanged and reports per-GPU VRAM, host RAM and pinned memory, "
            "and the last QwenFit run: seconds and peak VRAM per phase (encode, denoise, decode) next to the plan's "
            "prediction, s/step, and the plan that ran. The chart output draws that run's memory over time.",
            inputs=[io.AnyType.Input("anything", optional=True, tooltip="Anything; passed through unchanged.")],
            outputs=[
                io.AnyType.Output("passthrough", display_name="passthrough"),
                io.String.Output("report", display_name="report"),
                io.Image.Output(
                    "chart",
                    display_name="chart",
                    tooltip="VRAM over the last run (host RAM without a GPU), phases marked, peaks measured and "
                    "planned.",
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> float:
        return time.time()  # memory changes between runs: never reuse a cached report

    @classmethod
    def execute(cls, anything=None) -> io.NodeOutput:
        monitor = live_monitor()
        report = monitor_report(monitor.current(), monitor.sampler.source, last_run())
        chart = _chart()
        shown = {**ui.PreviewText(report).as_dict(), **ui.PreviewImage(chart, cls=cls).as_dict()}
        return io.NodeOutput(anything, report, chart, ui=shown)
