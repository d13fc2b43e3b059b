"""Registry and Manager metadata: what ComfyUI-Manager and the Comfy Registry read."""

from __future__ import annotations

import tomllib
from conftest import REPO


def test_pyproject_has_registry_fields():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = data["project"]
    for key in ("name", "version", "description", "license", "requires-python", "dependencies"):
        assert project.get(key), key
    assert project["urls"]["Repository"].startswith("https://")
    comfy = data["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert comfy.get(key), key


def test_requirements_never_touch_torch_and_need_a_new_enough_diffusers():
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    names = {line.split(">")[0].split("=")[0].split("<")[0].strip().lower() for line in lines if line}
    assert not names & {"torch", "torchvision", "torchaudio"}
    assert any(line.startswith("diffusers>=0.4") for line in lines)
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert sorted(data["project"]["dependencies"]) == sorted(line for line in lines if line)


def test_code_passes_ruff_including_no_eval_exec_or_pickle():
    """ruff with S102 (exec), S307 (eval) and S301 (pickle) on top of the usual checks."""
    import subprocess
    import sys
    from pathlib import Path

    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run([str(ruff), "check", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
