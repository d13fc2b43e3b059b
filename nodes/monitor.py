"""VRAMMonitor: pass anything through and report GPU and host memory at that point of the graph."""

from __future__ import annotations

import time

from comfy_api.latest import io, ui

from ..optim.memory import memory_snapshot
from ..optim.run_record import last_run
from .types import CATEGORY


class VRAMMonitor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitVRAMMonitor",
            display_name="QwenFit VRAM Monitor",
            category=CATEGORY,
            description="Passes its input through unchanged and reports per-GPU VRAM, host RAM, and the last QwenFit "
            "run's seconds and peak VRAM per phase (encode, denoise, decode) and s/step.",
            inputs=[io.AnyType.Input("anything", optional=True, tooltip="Anything; passed through unchanged.")],
            outputs=[
                io.AnyType.Output("passthrough", display_name="passthrough"),
                io.String.Output("report", display_name="report"),
            ],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> float:
        return time.time()  # memory changes between runs: never reuse a cached report

    @classmethod
    def execute(cls, anything=None) -> io.NodeOutput:
        report = memory_snapshot().describe()
        last = last_run()
        report += "\n" + (last.describe() if last is not None else "no QwenFit run yet in this session")
        return io.NodeOutput(anything, report, ui=ui.PreviewText(report))
