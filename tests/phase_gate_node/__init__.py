"""A test-only ComfyUI custom node (no nodes, one route) that holds a QwenFit run at the start of a phase until
ComfyUI's Cancel flag is set: the cancel tests then interrupt every phase deterministically, with no guess
about how long a phase lasts on a busy machine.

The session's test hosts link this folder into ``custom_nodes/`` beside the pack; it is inert until armed.
- ``POST /qwenfit_test/phase_gate`` with ``{"phase": "encode"}`` (or denoise, decode) arms it for one run;
  ``{"phase": null}`` disarms it.
- When the armed phase starts, the run's thread sends the websocket event ``qwenfit_test.phase_gate``
  (``{"phase": ...}``) and waits (up to ``HOLD_S``) until ``/interrupt`` has set ComfyUI's flag; the pack's
  phase checkpoint then raises as it does when a user presses Cancel while that phase runs.

It hears the phases as the pack's live monitor does, as an observer of the pack's run records
(``optim.monitoring.run_record.add_run_observer``), found among the loaded modules by its file's path: the
pack's module name depends on its folder's name.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import comfy.model_management
from aiohttp import web
from server import PromptServer

log = logging.getLogger("qwenfit_test_phase_gate")
NODE_CLASS_MAPPINGS: dict = {}
EVENT = "qwenfit_test.phase_gate"
HOLD_S = 120.0


class PhaseGate:
    """A run observer that holds the armed phase's start until Cancel is pressed."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self._lock = threading.Lock()

    def arm(self, phase: str | None) -> None:
        with self._lock:
            self.phase = phase

    def phase_started(self, name: str) -> None:
        with self._lock:
            if name != self.phase:
                return
            self.phase = None  # one hold per arming
        PromptServer.instance.send_sync(EVENT, {"phase": name})
        deadline = time.monotonic() + HOLD_S
        while not comfy.model_management.processing_interrupted() and time.monotonic() < deadline:
            time.sleep(0.01)
        log.info("phase gate: %s released (interrupted: %s)", name, comfy.model_management.processing_interrupted())

    def run_finished(self, _record: object) -> None:
        pass


GATE = PhaseGate()
_registered = False


def _register_with_the_pack() -> None:
    global _registered
    if _registered:
        return
    for module in list(sys.modules.values()):
        path = str(getattr(module, "__file__", "") or "").replace("\\", "/")
        if path.endswith("optim/monitoring/run_record.py") and hasattr(module, "add_run_observer"):
            module.add_run_observer(GATE)
            _registered = True
            return
    raise RuntimeError("the QwenFit pack's optim.monitoring.run_record is not loaded")


@PromptServer.instance.routes.post("/qwenfit_test/phase_gate")
async def arm_phase_gate(request: web.Request) -> web.Response:
    phase = (await request.json()).get("phase")
    _register_with_the_pack()
    GATE.arm(phase)
    return web.json_response({"armed": phase})
