"""Import nodes/preview.py on its own (it needs no ComfyUI), for arithmetic tests."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "qwenfit_nodes_preview", Path(__file__).resolve().parent.parent / "nodes" / "preview.py"
)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
checkerboard = _module.checkerboard
checkerboard_composite = _module.checkerboard_composite
