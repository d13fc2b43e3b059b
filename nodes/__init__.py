"""ComfyUI nodes of QwenFit (V3 schema). Thin adapters over ``optim``."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from ..optim import import_libraries_in_background
from .edit import InstructEdit
from .layered import LayeredDecompose
from .live_monitor import live_monitor
from .loader import OptimizedLoader
from .lora import QwenFitLora
from .monitor import VRAMMonitor
from .routes import register_routes
from .settings import OffloadToggle, PrecisionSelector, VAESlicer

NODES: list[type[io.ComfyNode]] = [
    OptimizedLoader,
    QwenFitLora,
    PrecisionSelector,
    OffloadToggle,
    VAESlicer,
    InstructEdit,
    LayeredDecompose,
    VRAMMonitor,
]


def _serve_the_browser() -> None:
    """Add the /qwenfit/ routes and start the live memory monitor (inside a ComfyUI server only)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None:
        register_routes(server.routes)
        live_monitor()


class QwenFitExtension(ComfyExtension):
    _loaded = False  # one server, one set of routes and one monitor, however often it is asked

    async def on_load(self) -> None:
        """Start serving the browser. Newer servers call this before asking for the nodes; 0.3.75
        never does, so ``get_node_list`` makes sure it ran (both happen before the server adds its
        routes to the app)."""
        if not QwenFitExtension._loaded:
            QwenFitExtension._loaded = True
            # diffusers and transformers take seconds to import: done while the server starts, not at the
            # first load.
            import_libraries_in_background()
            _serve_the_browser()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        await self.on_load()
        return NODES


async def comfy_entrypoint() -> QwenFitExtension:
    return QwenFitExtension()
