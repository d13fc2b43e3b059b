"""Shared fixtures: one real ComfyUI server with the pack for the whole session."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from comfy_host import ComfyHost  # noqa: E402

from tools.presets import SAMPLE_IMAGE  # noqa: E402

# A checkout under another name than the usual ComfyUI-QwenFit, with a dot and a dash:
# nothing in the pack may depend on its folder's name.
PACK_LINK_NAME = "QwenFit-renamed.clone"
SAMPLE = REPO / "workflows" / "inputs" / SAMPLE_IMAGE
BROKEN_MODEL = "broken-no-transformer"
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


def _add_broken_model(base: Path, models: Path) -> None:
    """A folder that looks like a model (model_index.json) but lacks its transformer."""
    folder = base / "models" / "diffusers" / BROKEN_MODEL
    folder.mkdir(parents=True, exist_ok=True)
    source = models / "diffusers" / "qwenfit-tiny-edit-2509"
    for part in ("model_index.json",):
        shutil.copyfile(source / part, folder / part)
    for part in ("vae", "text_encoder", "tokenizer", "scheduler", "processor"):
        (folder / part).symlink_to(source / part, target_is_directory=True)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> ComfyHost:
    base = tmp_path_factory.mktemp("comfy-base")
    host = ComfyHost(base, pack_link_name=PACK_LINK_NAME)
    host.prepare()
    _add_broken_model(base, host.models)
    host.add_input(SAMPLE)
    with host:
        yield host
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(host.log_path, ARTIFACTS / "server.log")


@pytest.fixture(scope="module")
def page(comfy):
    """The real ComfyUI frontend in headless Chromium (Debian's), one per test module."""
    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: `make setup` installs Debian's chromium (needs root), "
            "or set QWENFIT_CHROMIUM to a Chromium binary."
        )
    from playwright.sync_api import sync_playwright  # imported here so a missing browser reads clearly

    # Skip the first-run template dialog so the graph is what the screenshot shows.
    requests.post(f"{comfy.url}/settings/Comfy.TutorialCompleted", json=True, timeout=10)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(comfy.url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        yield page
        browser.close()


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())
