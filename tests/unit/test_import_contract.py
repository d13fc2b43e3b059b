"""The core's shape: layers that import one way, no cycles, a thin node layer on the public surface.

import-linter (its contract is in pyproject.toml) checks the layers; grimp, the graph it builds on,
finds cycles; an AST walk checks that nodes/ imports only ``optim``'s public surface.
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


def test_the_layers_point_one_way():
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_a_reverse_import_fails_the_contract(tmp_path):
    """The contract can fail: the same check on a copy whose model facts import a job."""
    shutil.copytree(REPO / "optim", tmp_path / "optim", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    anatomy = tmp_path / "optim" / "qwen" / "anatomy.py"
    anatomy.write_text(anatomy.read_text() + "\nfrom ..jobs import edit  # noqa: E402,F401\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    assert "optim.qwen is not allowed to import optim.jobs" in out.stdout


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
