"""Shared fixtures: a real ComfyUI server with the pack for the whole session, on each server the suite knows.

``comfy`` is ComfyUI 0.3.75 (always provisioned); ``comfy_080`` is ComfyUI 0.8.0, provisioned only where
``../shared/comfyui-0.8.0`` is next to the repository, else every test that asks for it is skipped (one line
in the summary says so). ``any_comfy`` runs a test on both. The 0.8.0 layer tests what differs between the
servers (registration, memory manager, /free, cancel, progress, mixed prompts, templates, the frontends), not
everything twice.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from comfy_host import ComfyHost, read_env, server_provisioned  # noqa: E402

from tools.presets import INPUT_IMAGES, SAMPLE_IMAGE  # noqa: E402

# A checkout under another name than the usual ComfyUI-QwenFit, with a dot and a dash:
# nothing in the pack may depend on its folder's name.
PACK_LINK_NAME = "QwenFit-renamed.clone"
# Where ComfyUI serves the pack's JS (its folder name, URL-quoted): stacks and script URLs under it
# are the pack's; the word "qwenfit" in a message says nothing (a TypeError's message never has it).
PACK_SCRIPTS = f"/extensions/{quote(PACK_LINK_NAME)}/"
SAMPLE = REPO / "example_workflows" / "inputs" / SAMPLE_IMAGE
BROKEN_MODEL = "broken-no-transformer"
# A test-only custom node beside the pack on the session hosts: holds a run at a phase's start until Cancel.
PHASE_GATE = REPO / "tests" / "phase_gate_node"
SKIP_080 = "ComfyUI 0.8.0 layer skipped: ../shared/comfyui-0.8.0 is not there (tools/provision.sh builds it from there)"
# Each server's session fixture.
SERVER_FIXTURES = {"0.3.75": "comfy", "0.8.0": "comfy_080"}
ARTIFACTS = REPO / ".cache" / "test-artifacts"
CHROMIUM = os.environ.get("QWENFIT_CHROMIUM", "/usr/bin/chromium")
# Chromium flags for a closed network and no display (see the field notes).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


# Tests mirror the code: tests/unit/<optim package>/ (the core alone), tests/server/ (through a real
# ComfyUI server), tests/browser/ (the real frontend in headless Chromium). Each folder is a marker, so
# `pytest -m unit` runs one layer; `make test` runs them all.
LAYER_MARKERS = ("unit", "server", "browser")


# The pinned frontend runs every preset. On the other two (0.8.0's 1.35.9 and the newest), a test parametrized
# over the presets (``ui_path``) runs these four (Edit and Layered, masked, a fast rung, several GPUs), which
# keeps the suite within CI's time. A module that must check every preset on more frontends names them:
# ``EVERY_PRESET_ON = ("newest",)``, or ``EVERY_PRESET_ON_EVERY_FRONTEND = True``.
PRESETS_ON_080 = ("qwenfit_edit_auto", "qwenfit_edit_masked", "qwenfit_edit_8gb_fast", "qwenfit_layered_multigpu")


def _left_out_on_080(item: pytest.Item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "page" not in params or "ui_path" not in params or params["page"][0] == "pinned":
        return False
    if getattr(item.module, "EVERY_PRESET_ON_EVERY_FRONTEND", False):
        return False
    if params["page"][0] in getattr(item.module, "EVERY_PRESET_ON", ()):
        return False
    return Path(params["ui_path"]).stem not in PRESETS_ON_080


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = REPO / "tests"
    for item in items:
        layer = Path(item.fspath).resolve().relative_to(tests).parts[0]
        if layer in LAYER_MARKERS:
            item.add_marker(layer)
    left_out = [item for item in items if _left_out_on_080(item)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not _left_out_on_080(item)]


def _add_broken_model(base: Path, models: Path) -> None:
    """A folder that looks like a model (model_index.json) but lacks its transformer."""
    folder = base / "models" / "diffusers" / BROKEN_MODEL
    folder.mkdir(parents=True, exist_ok=True)
    source = models / "diffusers" / "qwenfit-tiny-edit-2509"
    for part in ("model_index.json",):
        shutil.copyfile(source / part, folder / part)
    for part in ("vae", "text_encoder", "tokenizer", "scheduler", "processor"):
        (folder / part).symlink_to(source / part, target_is_directory=True)


# The stacks of the Errors among a console message's arguments, and one level down: ComfyUI catches an
# exception thrown in an extension's hook (setup, beforeRegisterNodeDef...) and logs it as
# console.error("Error calling extension ...", {error}, ...), whose text cuts the stack short.
ERROR_STACKS_IN_ARGS = """(args) => args
    .flatMap((arg) => { try { return arg instanceof Error ? [arg] : Object.values(arg ?? {}); } catch { return []; } })
    .filter((value) => value instanceof Error)
    .map((error) => String(error.stack || error))"""


@dataclass
class BrowserError:
    """An uncaught exception (or unhandled rejection) or a console.error in the page, with where it came from."""

    kind: str  # "uncaught", "console.error" or "console.warning"
    message: str
    traces: list[str] = field(default_factory=list)  # stacks and script URLs

    def from_pack(self) -> bool:
        if any(PACK_SCRIPTS in text for text in (self.message, *self.traces)):
            return True
        # A warning the frontend logs about something of the pack's: an event of ours it had no listener for
        # yet ("Unknown message type qwenfit.memory"), our extension or setting named in a deprecation.
        return self.kind == "console.warning" and "qwenfit" in self.message.lower()

    def __str__(self) -> str:
        return "\n".join([f"{self.kind}: {self.message}", *self.traces])


def _where(location: dict) -> str:
    # Playwright counts lines and columns from 0, stacks from 1.
    return f"at {location['url']}:{location['line'] + 1}:{location['column'] + 1}"


def _record_web_error(page, web_error) -> None:
    error = web_error.error
    message = f"{error.name}: {error.message}" if error.name else error.message
    stack = error.stack.removeprefix(message).lstrip("\n")  # its first line repeats the message
    # The location names the script even where there is no stack (a promise rejected with a string).
    traces = [stack, _where(web_error.location)] if stack else [_where(web_error.location)]
    page.errors.append(BrowserError("uncaught", message, traces))


def _record_console_error(page, message) -> None:
    from playwright.sync_api import Error as PlaywrightError

    if message.type not in ("error", "warning"):
        return
    try:
        stacks = page.evaluate(ERROR_STACKS_IN_ARGS, message.args)
    except PlaywrightError:  # handles of another context (a worker), or the page is closing
        stacks = []
    page.errors.append(BrowserError(f"console.{message.type}", message.text, [*stacks, _where(message.location)]))


def pack_errors(page) -> list[str]:
    """The page's errors that the pack's JS threw or logged; ComfyUI's own are left out."""
    served = page.evaluate("async () => await (await fetch('/extensions')).json()")
    # Else nothing could ever match and the tests that use this would pass whatever happens.
    assert any(url.startswith(PACK_SCRIPTS) for url in served), f"no script served under {PACK_SCRIPTS}: {served}"
    # One line per distinct error: a timer's error comes back every tick.
    seen = Counter(str(error) for error in page.errors if error.from_pack())
    return [text if times == 1 else f"{text}\n(seen {times} times)" for text, times in seen.items()]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Every test the missing 0.8.0 server skips is reported at one place, so that the summary folds them into
    one line ("SKIPPED [n] tests/conftest.py:...: ComfyUI 0.8.0 layer skipped: ...")."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and SKIP_080 in str(report.longrepr[2]):
        report.longrepr = (__file__, require_080.__code__.co_firstlineno, report.longrepr[2])
    return report


def _session_host(tmp_path_factory: pytest.TempPathFactory, server: str, log_name: str):
    base = tmp_path_factory.mktemp(f"comfy-base-{server}")
    host = ComfyHost(base, pack_link_name=PACK_LINK_NAME, server=server)
    host.prepare()
    _add_broken_model(base, host.models)
    (base / "custom_nodes" / "qwenfit_test_phase_gate").symlink_to(PHASE_GATE, target_is_directory=True)
    for name in INPUT_IMAGES:  # the presets' pictures
        host.add_input(SAMPLE.with_name(name))
    with host:
        yield host
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(host.log_path, ARTIFACTS / log_name)


def require_080() -> None:
    """Skip (one reason for the whole layer) where ComfyUI 0.8.0 was not provisioned."""
    if not server_provisioned("0.8.0"):
        pytest.skip(SKIP_080)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> ComfyHost:
    """ComfyUI 0.3.75 (or COMFYUI_PATH's) with the pack."""
    yield from _session_host(tmp_path_factory, "0.3.75", "server.log")


@pytest.fixture(scope="session")
def comfy_080(tmp_path_factory: pytest.TempPathFactory) -> ComfyHost:
    """ComfyUI 0.8.0 with the pack, serving its own frontend (1.35.9)."""
    require_080()
    yield from _session_host(tmp_path_factory, "0.8.0", "server-0.8.0.log")


@pytest.fixture(params=list(SERVER_FIXTURES))
def any_comfy(request: pytest.FixtureRequest) -> ComfyHost:
    """The test runs on each server (ids 0.3.75 and 0.8.0); the 0.8.0 one skips where it is not provisioned."""
    return request.getfixturevalue(SERVER_FIXTURES[request.param])


# The browser tests run on every frontend users have: 0.3.75's pinned one (1.32.9), 0.8.0's (1.35.9, served
# by the 0.8.0 host) and the newest on the registry (tools/provision.sh unpacks it), each with the classic
# canvas and with Nodes 2.0 (the Vue node renderer). A value names the env.sh key of a frontend served with
# --front-end-root (None: the host's own); FRONTEND_HOSTS names the fixture of the host that serves it (a
# module may override those fixtures, e.g. with hosts that have no models).
FRONTENDS = {"pinned": None, "0.8.0": None, "newest": "QWENFIT_FRONTEND_NEWEST"}
FRONTEND_HOSTS = {"pinned": "comfy", "0.8.0": "comfy_080", "newest": "newest_frontend_comfy"}
RENDERERS = {"classic": False, "nodes2": True}


@pytest.fixture(scope="session")
def newest_frontend_comfy(tmp_path_factory: pytest.TempPathFactory) -> ComfyHost:
    """A second server, serving the newest frontend package, for the browser tests."""
    static = read_env().get(FRONTENDS["newest"])
    if not static or not (Path(static) / "index.html").is_file():
        pytest.fail("the newest frontend is not provisioned: run `make setup` (tools/provision.sh)")
    base = tmp_path_factory.mktemp("comfy-newest-frontend")
    host = ComfyHost(base, pack_link_name=PACK_LINK_NAME, front_end=static)
    host.prepare()
    for name in INPUT_IMAGES:  # the presets' pictures
        host.add_input(SAMPLE.with_name(name))
    with host:
        yield host


@pytest.fixture(
    scope="module",
    params=[(f, r) for f in FRONTENDS for r in RENDERERS],
    ids=[f"{f}-{r}" for f in FRONTENDS for r in RENDERERS],
)
def page(request):
    """The real ComfyUI frontend in headless Chromium (Debian's), one per test module and frontend setup."""
    frontend, renderer = request.param
    comfy = request.getfixturevalue(FRONTEND_HOSTS[frontend])
    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: `make setup` installs Debian's chromium (needs root), "
            "or set QWENFIT_CHROMIUM to a Chromium binary."
        )
    from playwright.sync_api import sync_playwright  # imported here so a missing browser reads clearly

    # Skip the first-run template dialog so the graph is what the screenshot shows.
    requests.post(f"{comfy.url}/settings/Comfy.TutorialCompleted", json=True, timeout=10)
    requests.post(f"{comfy.url}/settings/Comfy.VueNodes.Enabled", json=RENDERERS[renderer], timeout=10)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.errors = []  # BrowserError, read through pack_errors()
        # The context's web errors carry the script's location as well as the stack.
        page.context.on("weberror", lambda web_error: _record_web_error(page, web_error))
        page.on("console", lambda message: _record_console_error(page, message))
        page.goto(comfy.url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        asked = page.evaluate("() => window.app.extensionManager.setting.get('Comfy.VueNodes.Enabled')")
        assert bool(asked) == RENDERERS[renderer], f"Nodes 2.0 is {asked}, not {RENDERERS[renderer]}"
        page.vue_nodes = RENDERERS[renderer]
        yield page
        browser.close()


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())
