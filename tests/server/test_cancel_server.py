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
