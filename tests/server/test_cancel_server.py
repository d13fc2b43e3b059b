"""Cancel through the real server while the loader and the run node execute: the prompt ends
interrupted, nothing half-done is kept, and the next prompt runs as if the cancelled one never had."""

from __future__ import annotations

import psutil
import pytest
from graphs import edit_graph


@pytest.mark.parametrize(("node", "model"), [("1", "qwenfit_tiny_edit_2509_bf16.safetensors"), ("3", None)])
def test_cancel_while_a_node_runs_then_the_next_prompt_is_unaffected(comfy, node: str, model: str | None) -> None:
    """Node 1 is the loader (a model not loaded yet: Cancel lands between its components), node 3 the
    edit (Cancel lands at the next phase start or step)."""
    server = psutil.Process(comfy.process.pid)
    warm = comfy.run(edit_graph(seed=1, width=64, height=64))
    assert warm.status == "success", warm.error_text()
    baseline = server.memory_info().rss
    wanted = edit_graph(seed=2, width=64, height=64, steps=3)
    if model is not None:
        wanted["1"]["inputs"]["model"] = model

    def cancel_when_the_node_starts(message: dict) -> None:
        if message.get("type") == "executing" and message["data"].get("node") == node:
            comfy.interrupt()

    cancelled = comfy.run(wanted, on_event=cancel_when_the_node_starts)
    assert cancelled.status == "interrupted"
    again = comfy.run(wanted)
    assert again.status == "success", again.error_text()
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


def test_cancel_is_checked_at_every_step_not_only_through_the_progress_bar():
    # Newer servers throttle ProgressBar updates, and the Cancel check inside them, to one per 0.1 s: a fast
    # step must still see a Cancel. Run in its own process with the host's ComfyUI modules.
    import subprocess

    from comfy_host import read_env
    from conftest import REPO

    env = read_env()
    out = subprocess.run(
        [env["QWENFIT_PYTHON"], "-c", CANCEL_AT_A_STEP, str(REPO / "nodes" / "comfy_glue.py")],
        cwd=env["QWENFIT_COMFYUI"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "cancelled at the step" in out.stdout, out.stdout + out.stderr[-2000:]
