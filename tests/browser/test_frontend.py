"""The presets load in the real ComfyUI frontend (headless Chromium) with every node and widget,
and the frontend's own "queue" conversion gives exactly the API twin the other tests run."""

from __future__ import annotations

import pytest
from conftest import ARTIFACTS, REPO, load_json, pack_errors

from tools.workflow_format import VIRTUAL_NODES, widget_names

UI_WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))


def test_our_extension_runs_in_the_browser(page):
    assert page.evaluate("() => window.app.extensions.some(e => e.name === 'QwenFit.core')")


@pytest.mark.parametrize("ui_path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_preset_loads_with_all_nodes_and_widgets(page, ui_path):
    workflow = load_json(ui_path)
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    loaded = page.evaluate(
        """() => window.app.graph._nodes.map(n => ({
              id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
              widgets: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value]))}))"""
    )
    assert len(loaded) == len(workflow["nodes"])
    assert [n["type"] for n in loaded if not n["registered"]] == []
    by_id = {str(n["id"]): n for n in loaded}  # frontend 1.58 keeps node ids as strings, 1.32 as numbers
    object_info = page.evaluate("async () => await (await fetch('/object_info')).json()")
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        names = [name for name, _ in widget_names(object_info[node["type"]])]
        values = [v for v in node["widgets_values"] if v not in ("randomize", "fixed", "image")]
        for name, value in zip(names, values, strict=False):
            assert by_id[str(node["id"])]["widgets"][name] == value, (node["type"], name)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"frontend-{ui_path.stem}.png"))


@pytest.mark.parametrize("ui_path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_frontend_queues_exactly_the_api_twin(page, ui_path):
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", load_json(ui_path))
    queued = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    twin = load_json(REPO / "tests" / "workflows" / f"{ui_path.stem}.api.json")
    strip = lambda prompt: {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}  # noqa: E731
    assert strip(queued) == strip(twin)


def test_no_page_errors_from_the_pack(page):
    errors = pack_errors(page)
    assert not errors, "\n\n".join(errors)
