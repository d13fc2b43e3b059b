"""ComfyUI's memory manager sees what QwenFit keeps on the GPU between runs, and can take it back.

The pack registers one stand-in model with ``comfy.model_management`` for the pipeline it holds: a
``ModelPatcher`` around an empty module whose sizes are the pipeline's (its plan's peak, the bytes it keeps
on the GPU now). When a native node later needs VRAM (``free_memory``, ``unload_all_models``, the
frontend's "unload models" button), ComfyUI unloads it like any of its own models, and the pipeline gives
back its resident blocks, text encoder, small parts and VAE while keeping its host memory; the next
QwenFit run places them again (``LoadedPipeline.release_gpu``). Subclassing ``ModelPatcher`` keeps every
member ComfyUI's bookkeeping reads, in 0.3.75 and in the dynamic-VRAM servers of 2026, where such a
non-dynamic model is still unloaded for others. Never during a run: ComfyUI runs one node at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import comfy.model_management
import comfy.model_patcher
import torch

from ..optim import LoadedPipeline

log = logging.getLogger("qwenfit")
MAX_RELEASES_KEPT = 20


def _running_node() -> str | None:
    """The node ComfyUI is executing now (None between nodes, e.g. the /free route)."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:  # a server without it: the release is still counted
        return None
    context = get_executing_context()
    return None if context is None else str(context.node_id)


class _NoWeights(torch.nn.Module):
    """What ComfyUI's bookkeeping holds as the model: the weights stay with the pack's engine."""


class QwenFitHold(comfy.model_patcher.ModelPatcher):
    """The pack's held pipeline as ComfyUI's memory manager sees it."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(_NoWeights(), load_device=device, offload_device=torch.device("cpu"))
        self.pipeline: LoadedPipeline | None = None
        self.planned_bytes = 0
        self.releases: list[dict[str, Any]] = []  # when ComfyUI took memory back, and for which node
        self.release_count = 0

    def model_size(self) -> int:
        return max(self.planned_bytes, self.loaded_size())

    def loaded_size(self) -> int:
        return 0 if self.pipeline is None else self.pipeline.gpu_bytes_held()

    def current_loaded_device(self) -> torch.device:
        return self.load_device if self.loaded_size() else self.offload_device

    def partially_load(self, device_to: Any, extra_memory: Any = 0, force_patch_weights: bool = False) -> int:
        return 0  # the pack places its own weights when it runs

    def partially_unload(self, device_to: Any, memory_to_free: Any = 0, force_patch_weights: bool = False) -> int:
        return 0  # a plan places blocks as a whole: ComfyUI then unloads (detaches) the pipeline

    def detach(self, unpatch_all: bool = True) -> torch.nn.Module:
        # unpatch_all=False: ComfyUI registering this same model again (the next run); nothing to give back.
        if unpatch_all and self.pipeline is not None:
            freed = self.pipeline.release_gpu()
            node = _running_node()
            self.release_count += 1
            self.releases = [
                *self.releases[-(MAX_RELEASES_KEPT - 1) :],
                {"at": time.time(), "node": node, "bytes": freed},
            ]
            log.info(
                "QwenFit: ComfyUI unloaded the pipeline (%s): %.2f GiB of GPU memory given back; the weights stay "
                "in host memory and the next QwenFit run places them again",
                f"room for node {node}" if node else "between prompts: /free or Unload Models", freed / 2**30,
            )  # fmt: skip
        return self.model


_lock = threading.Lock()
_hold: QwenFitHold | None = None


def register_run(pipeline: LoadedPipeline, device: torch.device) -> None:
    """Before a QwenFit run: tell ComfyUI's memory manager what this pipeline will hold on ``device``
    (ComfyUI frees its own models when they would not fit beside it)."""
    global _hold
    with _lock:
        if _hold is None or _hold.load_device != device:
            _hold = QwenFitHold(device)
        _hold.pipeline = pipeline
        _hold.planned_bytes = pipeline.last_plan_peak()
        hold = _hold
    comfy.model_management.load_models_gpu([hold])


def holdings_json() -> dict[str, Any]:
    """What the pack's report says about ComfyUI's memory manager and the pipeline's GPU holdings."""
    hold = _hold
    if hold is None:
        return {"registered": False, "gpu_bytes": 0, "release_count": 0, "releases": []}
    registered = any(entry.model is hold for entry in comfy.model_management.current_loaded_models)
    return {
        "registered": registered,
        "gpu_bytes": hold.loaded_size(),
        "placed": hold.pipeline is not None and hold.pipeline.placed,
        "release_count": hold.release_count,
        "releases": list(hold.releases),
    }
