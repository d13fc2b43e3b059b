"""Every preset, as the real frontend draws it (pinned and newest, classic canvas and Nodes 2.0): no node
covers another, and with an empty models folder the frontend offers every file the preset needs.

This module serves the frontends from its own hosts, whose models folders are empty (the session's hosts
have the tiny models linked), so the frontend's missing-models list is what a new user sees."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import conftest
import pytest
import requests
from comfy_host import ComfyHost
from conftest import FRONTENDS, PACK_LINK_NAME, REPO, SAMPLE, load_json, read_env

from tools.presets import INPUT_IMAGES, MODEL_FILES, PRESET_FILES

UI_WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
LOADER = "QwenFitOptimizedLoader"
MODEL_SUFFIXES = (".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".pth", ".bin")
# Every preset on the newest frontend too: its missing-models list is where the bug of the presets showed.
EVERY_PRESET_ON = ("newest",)


def _empty_models_host(base: Path, front_end: str | None = None, **server) -> ComfyHost:
    host = ComfyHost(base, pack_link_name=PACK_LINK_NAME, front_end=front_end, **server)
    host.models = base / "no-models"  # prepare() links nothing: every model folder stays empty
    host.prepare()
    for name in INPUT_IMAGES:  # the presets' pictures (a missing one is another warning)
        host.add_input(SAMPLE.with_name(name))
    return host


# The `page` fixture (tests/conftest.py) serves each frontend from a host fixture (`comfy`, `comfy_080`,
# `newest_frontend_comfy`): these replace the session's hosts for this module only.
@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory):
    with _empty_models_host(tmp_path_factory.mktemp("comfy-no-models")) as host:
        _warn_about_missing_models(host)
        yield host


@pytest.fixture(scope="module")
def comfy_080(tmp_path_factory: pytest.TempPathFactory):
    """ComfyUI 0.8.0 with its own frontend (1.35.9); skipped where it is not provisioned."""
    conftest.require_080()
    with _empty_models_host(tmp_path_factory.mktemp("comfy-080-no-models"), server="0.8.0") as host:
        _warn_about_missing_models(host)
        yield host


@pytest.fixture(scope="module")
def newest_frontend_comfy(tmp_path_factory: pytest.TempPathFactory):
    static = read_env().get(FRONTENDS["newest"])
    if not static or not (Path(static) / "index.html").is_file():
        pytest.fail("the newest frontend is not provisioned: run `make setup` (tools/provision.sh)")
    with _empty_models_host(tmp_path_factory.mktemp("comfy-newest-no-models"), static) as host:
        _warn_about_missing_models(host)
        yield host


def _warn_about_missing_models(host: ComfyHost) -> None:
    # The frontend's default, said explicitly: a user who ticked "Don't show this again" sees no list.
    requests.post(f"{host.url}/settings/Comfy.Workflow.ShowMissingModelsWarning", json=True, timeout=10)


# ---- layout ---------------------------------------------------------------------------------------------

# Each node's rectangle as drawn, in canvas units (classic: pos/size plus the title bar above pos) or in
# screen pixels (Nodes 2.0: the node's element). Rectangles are [x, y, w, h].
CLASSIC_RECTS = """() => {
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    return window.app.graph.nodes.map(n => ({
        id: String(n.id), type: n.type, title: n.title,
        rect: n.flags?.collapsed ? null : [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]}));
}"""
VUE_RECTS = """() => window.app.graph.nodes.map(n => {
    const element = document.querySelector(`[data-node-id="${n.id}"]`);
    const r = element?.getBoundingClientRect();
    return {id: String(n.id), type: n.type, title: n.title, rect: r ? [r.x, r.y, r.width, r.height] : null};
})"""
# Settled: every node has its element (Nodes 2.0), and every QwenFit node that asked for a plan preview has
# its answer (the badge it fills may change the node's height).
SETTLED = """(vue) => {
    const nodes = window.app.graph.nodes;
    if (!nodes.length) return false;
    if (vue && !nodes.every(n => document.querySelector(`[data-node-id="${n.id}"]`))) return false;
    return nodes.every(n => !n.qwenfit || (n.qwenfit.preview && !n.qwenfit.pending));
}"""
# The whole graph in view at 100% zoom or near it (Nodes 2.0 may leave out nodes outside the view, and draws
# less of a node when zoomed far out): a window wide enough for the widest preset.
WINDOW = {"width": 2800, "height": 1600}
FIT = """() => {
    const canvas = window.app.canvas, nodes = window.app.graph.nodes;
    const x0 = Math.min(...nodes.map(n => n.pos[0])) - 20, y0 = Math.min(...nodes.map(n => n.pos[1])) - 60;
    const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
    const box = canvas.canvas.getBoundingClientRect();
    canvas.ds.scale = Math.min(1, box.width / (x1 - x0 + 40), box.height / (y1 - y0 + 300));
    canvas.ds.offset = [-x0, -y0];
    canvas.setDirty(true, true);
}"""
NEXT_FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


def _load(page, workflow: dict) -> None:
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)


def _overlaps(nodes: list[dict]) -> list[str]:
    found = []
    for a, b in combinations(nodes, 2):
        (ax, ay, aw, ah), (bx, by, bw, bh) = a["rect"], b["rect"]
        dx = min(ax + aw, bx + bw) - max(ax, bx)
        dy = min(ay + ah, by + bh) - max(ay, by)
        if dx > 0 and dy > 0:
            found.append(
                f"{a['title'] or a['type']} ({a['id']}) and {b['title'] or b['type']} ({b['id']}): "
                f"{dx:.0f} x {dy:.0f} px"
            )
    return found


@pytest.mark.parametrize("ui_path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_no_two_nodes_overlap(page, ui_path):
    workflow = load_json(ui_path)
    page.set_viewport_size(WINDOW)
    _load(page, workflow)
    page.evaluate(FIT)
    page.wait_for_function(SETTLED, arg=page.vue_nodes, timeout=120_000)
    page.evaluate(NEXT_FRAMES)  # the sizes the last answer caused are laid out
    nodes = page.evaluate(VUE_RECTS if page.vue_nodes else CLASSIC_RECTS)
    assert len(nodes) == len(workflow["nodes"])
    assert [n["id"] for n in nodes if n["rect"] is None] == []
    overlaps = _overlaps(nodes)
    rects = "\n".join(f"  {n['title'] or n['type']}: {[round(v) for v in n['rect']]}" for n in nodes)
    assert not overlaps, "\n".join(overlaps) + "\nrectangles:\n" + rects


# ---- missing models --------------------------------------------------------------------------------------

# What the frontend lists as missing after a load, as (name, directory, url), from where each version keeps it:
# 1.58 surfaces the candidates it scanned from the nodes' widgets in its `missingModel` store (the Errors tab
# and "Download all" read them; only those with a url and a directory can be downloaded); up to 1.3x the
# "Missing Models" dialog lists `directory / name` for every model of the workflow and its nodes.
STORE = """() => {
    const pinia = document.getElementById('vue-app').__vue_app__.config.globalProperties.$pinia;
    const store = pinia._s.get('missingModel');
    if (!store) return null;
    return (store.missingModelCandidates ?? []).map(c => ({name: c.name, directory: c.directory ?? null,
                                                          url: c.url ?? null, missing: c.isMissing}));
}"""
HAS_STORE = f"() => ({STORE})() !== null"
DIALOG_LABELS = """(model) => {
    const dialogs = [...document.querySelectorAll('.p-dialog')].filter(d => d.textContent.includes(model));
    if (!dialogs.length) return null;
    const text = dialogs.at(-1).innerText;
    return text.split('\\n').map(l => l.trim()).filter(l => l.includes(' / '));
}"""


def _files_named(workflow: dict) -> set[str]:
    """The files the preset's loader names on its widgets (transformer, text encoder, VAE, LoRA)."""
    loader = next(n for n in workflow["nodes"] if n["type"] == LOADER)
    return {v for v in loader["widgets_values"] if isinstance(v, str) and v.endswith(MODEL_SUFFIXES)}


def _close_dialogs(page) -> None:
    """Close what an earlier load left open (a dialog may ask about something else, e.g. missing inputs)."""
    for _ in range(10):
        count = page.locator(".p-dialog").count()
        if not count:
            return
        close = page.locator(".p-dialog .p-dialog-close-button")
        if close.count():
            close.last.click()
        else:
            page.keyboard.press("Escape")
        page.wait_for_function("(n) => document.querySelectorAll('.p-dialog').length < n", arg=count, timeout=30_000)
    pytest.fail(f"dialogs stay open: {page.locator('.p-dialog').all_inner_texts()}")


@pytest.mark.parametrize("ui_path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_missing_models_list_names_every_file(page, ui_path):
    """A new user (empty models folder) is offered every file of the preset, each from Comfy-Org's address
    into its models folder: the transformer, the text encoder, the VAE and any LoRA."""
    workflow = load_json(ui_path)
    kind = "layered" if "layered" in ui_path.stem else "edit"
    wanted = set(PRESET_FILES[kind]) | _files_named(workflow)
    where = {name: (MODEL_FILES[name] if name in MODEL_FILES else ("loras", None)) for name in wanted}
    transformer = PRESET_FILES[kind][0]  # listed whatever else is: the sign that the list is there
    _close_dialogs(page)
    _load(page, workflow)
    if page.evaluate(HAS_STORE):
        page.wait_for_function(f"(m) => ({STORE})().some(c => c.name === m)", arg=transformer, timeout=60_000)
        listed = page.evaluate(STORE)
        offered = {
            c["name"]: (c["directory"], c["url"]) for c in listed if c["url"] and c["directory"] and c["missing"]
        }
        assert wanted <= set(offered), f"not offered for download: {sorted(wanted - set(offered))}; listed: {listed}"
        for name in wanted:
            directory, url = where[name]
            assert offered[name][0] == directory and (url is None or offered[name][1] == url), (name, offered[name])
    else:
        page.wait_for_function(f"(m) => ({DIALOG_LABELS})(m) !== null", arg=transformer, timeout=60_000)
        labels = page.evaluate(DIALOG_LABELS, transformer)
        _close_dialogs(page)
        expected = {f"{where[name][0]} / {name}" for name in wanted}
        assert expected <= set(labels), f"not in the dialog: {sorted(expected - set(labels))}; shown: {labels}"
