"""Cancel through the real server, on each server (0.3.75 and 0.8.0), in every phase of a run (load, text
encode, denoise, decode): the prompt ends interrupted, nothing half-done is kept, and the next prompt runs as if
the cancelled one never had.

Each Cancel is sent on an event the server sent, never after a guessed delay: the loader's ``executing`` event
(a model not loaded yet: Cancel lands between its components), or the test-only phase gate
(``tests/phase_gate_node``), which holds the run at the start of the phase until Cancel has arrived, as a user
pressing Cancel while that phase runs.
"""

from __future__ import annotations

import psutil
import pytest
import requests
from graphs import edit_graph

GATE_EVENT = "qwenfit_test.phase_gate"


def _arm_phase_gate(comfy, phase: str | None) -> None:
    answer = requests.post(f"{comfy.url}/qwenfit_test/phase_gate", json={"phase": phase}, timeout=10)
    assert answer.status_code == 200, answer.text


_baselines: dict[str, int] = {}  # per server: its RSS after one warm run (one run, not one per phase)


def _warm_baseline(comfy) -> int:
    if comfy.url not in _baselines:
        warm = comfy.run(edit_graph(seed=1, width=64, height=64))
        assert warm.status == "success", warm.error_text()
        _baselines[comfy.url] = psutil.Process(comfy.process.pid).memory_info().rss
    return _baselines[comfy.url]


# Gated phases first: they run on the model the warm run loaded; "load" then switches to another model.
PHASES = ("encode", "denoise", "decode", "load")


@pytest.mark.parametrize("phase", PHASES)
def test_cancel_in_every_phase_then_the_next_prompt_is_unaffected(any_comfy, phase: str) -> None:
    comfy = any_comfy
    server = psutil.Process(comfy.process.pid)
    baseline = _warm_baseline(comfy)
    # A seed of its own: the previous case's last prompt would otherwise be answered from ComfyUI's cache.
    wanted = edit_graph(seed=2 + PHASES.index(phase), width=64, height=64, steps=3)
    seen: list[str] = []
    if phase == "load":
        wanted["1"]["inputs"]["model"] = "qwenfit_tiny_edit_2509_bf16.safetensors"  # not loaded yet

        def cancel(message: dict) -> None:
            if message.get("type") == "executing" and message["data"].get("node") == "1":
                seen.append(phase)
                comfy.interrupt()

    else:
        _arm_phase_gate(comfy, phase)

        def cancel(message: dict) -> None:
            if message.get("type") == GATE_EVENT:
                seen.append(message["data"]["phase"])
                comfy.interrupt()

    try:
        cancelled = comfy.run(wanted, on_event=cancel)
    finally:
        _arm_phase_gate(comfy, None)
    assert seen == [phase]
    assert cancelled.status == "interrupted", cancelled.error_text()
    if phase != "load":  # held at the phase's start: the edit node was running, the image never saved
        assert cancelled.error.get("node_id") == "3", cancelled.error
        assert not cancelled.files
    again = comfy.run(wanted)
    assert again.status == "success", again.error_text()
    assert [e["value"] for e in again.progress_events("3")] == [1, 2, 3]
    assert server.memory_info().rss - baseline < 300 * 2**20


CANCEL_AT_A_STEP = """
import importlib.util, sys
import comfy.cli_args
comfy.cli_args.args.cpu = True  # as the test server runs
import comfy.model_management as mm
import comfy.utils
spec = importlib.util.spec_from_file_location("qwenfit_comfy_glue", sys.argv[1])
glue = importlib.util.module_from_spec(spec)
spec.loader.exec_module(glue)
comfy.utils.PROGRESS_BAR_HOOK = None  # a bar that checks nothing, as a throttled update on newer servers
on_step = glue.progress_callback(3, None)
on_step(1, 3)
mm.interrupt_current_processing(True)
try:
    on_step(2, 3)
except mm.InterruptProcessingException:
    print("cancelled at the step")
"""


@pytest.mark.parametrize("server", ["0.3.75", "0.8.0"])
def test_cancel_is_checked_at_every_step_not_only_through_the_progress_bar(server: str):
    # Newer servers throttle ProgressBar updates, and the Cancel check inside them, to one per 0.1 s: a fast
    # step must still see a Cancel. Run in its own process with the server's ComfyUI modules.
    import subprocess

    from comfy_host import SERVERS, read_env
    from conftest import REPO, require_080

    if server == "0.8.0":
        require_080()
    python_key, comfy_key = SERVERS[server]
    env = read_env()
    out = subprocess.run(
        [env[python_key], "-c", CANCEL_AT_A_STEP, str(REPO / "nodes" / "comfy_glue.py")],
        cwd=env[comfy_key],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "cancelled at the step" in out.stdout, out.stdout + out.stderr[-2000:]
