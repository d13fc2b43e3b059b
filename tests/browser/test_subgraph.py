"""QwenFit nodes inside a subgraph: their plan badges show the preview (the loader found through the
subgraph's nodes), and a queued run's measured figures land on the nodes that ran, named by their
execution ids ("10:7": node 7 inside subgraph instance 10)."""

from __future__ import annotations

from conftest import REPO, load_json, pack_errors
from test_memory_panel import LOADER, STATE, fresh_seed, load_on_tiny_models, settled_previews

EDIT = "QwenFitInstructEdit"


def test_qwenfit_nodes_inside_a_subgraph_preview_and_show_the_run(page):
    workflow = load_json(REPO / "example_workflows" / "qwenfit_edit_auto.json")
    load_on_tiny_models(page, workflow, steps=2, width=128, height=128, seed=fresh_seed())
    # Everything but the picture's loader goes into one subgraph, as a user selects and converts it.
    instance = page.evaluate(
        """() => {
            const graph = window.app.graph;
            const inside = new Set(graph.nodes.filter(n => n.type !== 'LoadImage'));
            const made = graph.convertToSubgraph(inside);
            // And opens it, to see the nodes inside (their badges show only where their graph is shown).
            const canvas = window.app.canvas;
            if (canvas.openSubgraph) canvas.openSubgraph(made.subgraph); else canvas.setGraph(made.subgraph);
            return String(made.node.id);
        }"""
    )
    settled_previews(page)
    # The renderer mounts the opened graph's nodes (Nodes 2.0 does so a moment later).
    page.wait_for_function(f"() => ({STATE})().every(n => n.shown)", timeout=15_000)
    nodes = page.evaluate(STATE)
    by_type = {n["type"]: n for n in nodes}
    assert set(by_type) == {LOADER, EDIT}, nodes
    for node in nodes:
        assert node["id"].startswith(f"{instance}:"), node  # found inside the subgraph
        assert node["preview"]["ok"], node["preview"]
        assert node["lines"][0].startswith("plan: peak ") and node["shown"], node
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    page.wait_for_function(f"() => ({STATE})().some(n => n.type === '{EDIT}' && n.record)", timeout=180_000)
    ran = {n["type"]: n for n in page.evaluate(STATE)}
    assert ran[EDIT]["record"]["seconds_per_step"] > 0
    assert any(line.startswith("last run: ") for line in ran[EDIT]["lines"]), ran[EDIT]
    assert ran[LOADER]["record"] == ran[EDIT]["record"]  # the loader feeding it, inside the subgraph too
    assert not pack_errors(page)
