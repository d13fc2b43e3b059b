"""The core's shape: layers that import one way, no cycles, a thin node layer on the public surface.

import-linter (its contracts are in pyproject.toml) checks the layers and that planning and jobs import
nothing of loading; grimp, the graph it builds on, finds cycles; an AST walk checks that
nodes/ imports only ``optim``'s public surface.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the checkout at ``root`` (its pyproject.toml holds the contract)."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300)


LAYERS = "optim's layers point one way"
NOTHING_THAT_LOADS = "planning and jobs need nothing that loads"


def copy_with_import(root: Path, module: str, line: str) -> Path:
    """A copy of the checkout's ``optim/`` and contract at ``root`` whose ``module`` (a path under
    ``optim/``) ends with the import ``line``."""
    shutil.copytree(REPO / "optim", root / "optim", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root)
    path = root / "optim" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402,F401\n")
    return root


def test_the_layers_point_one_way():
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout
    assert f"{LAYERS} KEPT" in out.stdout and f"{NOTHING_THAT_LOADS} KEPT" in out.stdout


def test_a_reverse_import_fails_the_contract(tmp_path):
    """The contract can fail: the same check on a copy whose model facts import a job."""
    out = lint_imports(copy_with_import(tmp_path, "qwen/anatomy.py", "from ..jobs import edit"))
    assert out.returncode != 0
    assert "optim.qwen is not allowed to import optim.jobs" in out.stdout


def test_planning_that_imports_loading_fails_the_contract(tmp_path):
    """Planning decides before anything loads: a copy whose plan imports the loader breaks both contracts."""
    out = lint_imports(copy_with_import(tmp_path, "planning/plan.py", "from ..loading import loader"))
    assert out.returncode != 0
    assert f"{NOTHING_THAT_LOADS} BROKEN" in out.stdout
    assert "optim.planning is not allowed to import optim.loading" in out.stdout


def test_a_job_that_imports_loading_fails_the_contract(tmp_path):
    """Jobs run a loaded pipeline (optim/execution/loaded_pipeline.py) and never load: the layers allow the
    import (loading sits below jobs), only the second contract catches it, in a run as in the plan preview."""
    for module in ("jobs/edit.py", "jobs/plan_preview.py"):
        out = lint_imports(
            copy_with_import(tmp_path / module.replace("/", "_"), module, "from ..loading import loader")
        )
        assert out.returncode != 0
        assert f"{LAYERS} KEPT" in out.stdout and f"{NOTHING_THAT_LOADS} BROKEN" in out.stdout
        assert "optim.jobs is not allowed to import optim.loading" in out.stdout
        assert f"optim.{module[:-3].replace('/', '.')} -> optim.loading.loader" in out.stdout


def test_no_import_cycles():
    import grimp

    graph = grimp.build_graph("optim")
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(module: str) -> None:
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for other in edges[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    # The package's own __init__ imports its public surface from everywhere: that is not a cycle of layers.
    cycles = [c for c in cycles if c != ["optim"] and "optim" not in c]
    assert cycles == []


def test_optim_has_a_short_top_level():
    entries = sorted(p.name for p in (REPO / "optim").iterdir() if p.name != "__pycache__")
    assert len(entries) <= 11, entries
    assert {"qwen", "files", "quant", "planning", "execution", "loading", "monitoring", "jobs"} <= set(entries)


def test_nodes_import_only_the_public_surface():
    """nodes/ is thin: from the core it takes only what ``optim/__init__.py`` exports."""
    public = set(ast.literal_eval(_all_of(REPO / "optim" / "__init__.py")))
    for path in sorted((REPO / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and (node.module or "").startswith("optim"):
                assert node.module == "optim", f"{path.name} imports {node.module}: use optim's public surface"
                missing = {a.name for a in node.names} - public
                assert not missing, f"{path.name} imports {missing}, which optim does not export"


def _all_of(path: Path) -> str:
    tree = ast.parse(path.read_text())
    assignment = next(
        n for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets)
    )
    return ast.unparse(assignment.value)
