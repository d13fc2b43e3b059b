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
    # The oldest server the tests run on (tests/comfy_host.py pins it); Manager hides the pack on older ones.
    assert comfy["requires-comfyui"] == ">=0.3.75"


def test_the_registry_archive_carries_what_comfyui_loads_and_nothing_for_developers():
    """What comfy-cli packs: the tracked files minus the .comfyignore patterns (gitignore syntax, so git
    itself applies them here)."""
    import subprocess

    def tracked(*extra: str) -> set[str]:
        out = subprocess.run(["git", "ls-files", "--cached", *extra], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return set(out.stdout.splitlines())

    left_out = tracked("--ignored", "--exclude-from=.comfyignore")
    archive = tracked() - left_out
    tops = {path.split("/")[0] for path in archive}
    assert tops == {
        "__init__.py", "nodes", "optim", "web", "example_workflows", "pyproject.toml", "requirements.txt",
        "README.md", ".comfyignore",
    }, tops  # fmt: skip
    assert {"tests", "bench", "docs", "tools", ".ci"} <= {path.split("/")[0] for path in left_out}
    assert any(path.endswith(".jpg") for path in archive if path.startswith("example_workflows/"))


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


def test_comfy_cli_validates_the_node_pack(tmp_path):
    """`comfy node validate` (comfy-cli, what publishing to the Registry runs first): the pyproject and its
    security checks (no eval/exec and the like in the pack's code) pass."""
    import os
    import subprocess

    from comfy_host import read_env

    cli = read_env()["QWENFIT_COMFY_CLI"]
    env = dict(os.environ, HOME=str(tmp_path))  # its config and telemetry choice stay out of the real home
    out = subprocess.run(
        [cli, "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    said = out.stdout + out.stderr
    # comfy-cli 1.23 still exits 0 on its security findings (eval/exec: "will be an error soon"): read them.
    assert "Security warnings" not in said and "All validation checks passed" in said, said
