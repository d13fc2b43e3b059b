"""ComfyUI nodes of QwenFit (V3 schema). Thin adapters over ``optim``."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .edit import InstructEdit
from .layered import LayeredDecompose
from .loader import OptimizedLoader
from .monitor import VRAMMonitor
from .settings import OffloadToggle, PrecisionSelector, VAESlicer

NODES: list[type[io.ComfyNode]] = [
    OptimizedLoader,
    PrecisionSelector,
    OffloadToggle,
    VAESlicer,
    InstructEdit,
    LayeredDecompose,
    VRAMMonitor,
]


class QwenFitExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> QwenFitExtension:
    return QwenFitExtension()
