"""Shared fixtures: one real ComfyUI server with the pack for the whole session."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

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
    artifacts = REPO / ".cache" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(host.log_path, artifacts / "server.log")


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())
