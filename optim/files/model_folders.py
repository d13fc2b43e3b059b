"""Find diffusers-format model folders under the model roots the host names.

Folder names are resolved only by listing the roots: a name that is not listed, or that
tries to step outside its root, is refused. No path the user types is ever opened.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import QwenFitError

_MARKER = "model_index.json"
# A folder may sit one level down (e.g. "Qwen/Qwen-Image-Edit-2509"), as hub snapshots do.
_MAX_DEPTH = 2


def _candidate_folders(root: Path) -> Iterable[tuple[str, Path]]:
    if not root.is_dir():
        return
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            path = Path(entry.path)
            if (path / _MARKER).is_file():
                yield path.relative_to(root).as_posix(), path
            elif depth + 1 < _MAX_DEPTH:
                stack.append((path, depth + 1))


def list_pipeline_folders(roots: Iterable[str | os.PathLike]) -> list[str]:
    """Names (relative to their root, '/'-separated) of every diffusers folder under ``roots``."""
    names: list[str] = []
    for root in roots:
        for name, _ in _candidate_folders(Path(root)):
            if name not in names:
                names.append(name)
    return sorted(names)


def resolve_pipeline_folder(roots: Iterable[str | os.PathLike], name: str) -> Path:
    """The folder listed under ``name``; a clear error when it is not there."""
    roots = [Path(r) for r in roots]
    for root in roots:
        for listed, path in _candidate_folders(root):
            if listed == name:
                return path
    where = ", ".join(str(r) for r in roots) or "(no diffusers model folders configured)"
    raise QwenFitError(
        f"model folder {name!r} was not found under {where}. Put a diffusers-format folder "
        "(with model_index.json) in models/diffusers and refresh the page (press R), then pick it."
    )
