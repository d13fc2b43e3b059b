"""The few places where the pack touches ComfyUI internals: device, model folders, progress, memory."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import comfy.model_management
import comfy.utils
import folder_paths
import torch

if TYPE_CHECKING:  # only for the type hint: this module also loads on its own (the Cancel test does)
    from ..optim import LoadedPipeline

log = logging.getLogger("qwenfit")


def compute_device() -> torch.device:
    """The device ComfyUI runs models on (the CPU under --cpu)."""
    device = comfy.model_management.get_torch_device()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def model_roots(kind: str) -> list[str]:
    """Every folder ComfyUI (and extra_model_paths.yaml) names for ``kind`` (diffusers, vae, ...)."""
    return list(folder_paths.get_folder_paths(kind))


def output_directory() -> str:
    """ComfyUI's output folder (where SaveImage writes)."""
    return folder_paths.get_output_directory()


def qwen_tokenizer_dir() -> Path:
    """The Qwen2.5 tokenizer ComfyUI ships (used with split files, which carry none)."""
    return Path(comfy.utils.__file__).resolve().parent / "text_encoders" / "qwen25_tokenizer"


def free_comfy_models() -> None:
    """Unload ComfyUI's own models before we load ours, so the two never compete for VRAM."""
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


def after_run() -> None:
    """Give cached GPU blocks back after a run, as ComfyUI's own nodes do."""
    comfy.model_management.soft_empty_cache()


@contextmanager
def node_run(node_id: str | None, pipeline: LoadedPipeline | None = None) -> Iterator[None]:
    """Around a run node's work: ComfyUI's memory manager learns what ``pipeline`` holds (and may take it
    back after the run), the live monitor names this node, the GPU cache is handed back after."""
    from .live_monitor import live_monitor
    from .memory_manager import register_run

    if pipeline is not None:
        register_run(pipeline, compute_device())
    try:
        with live_monitor().node_running(node_id):
            yield
    finally:
        after_run()


def progress_callback(total: int, node_id: str | None):
    """One ComfyUI progress update per denoising step, and a Cancel check at every step: newer servers
    throttle the bar's updates (and the check inside them) to one per 0.1 s."""
    bar = comfy.utils.ProgressBar(total, node_id=node_id)

    def on_step(done: int, steps: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, steps)

    return on_step


def phase_checkpoint(_phase: str) -> None:
    """Called as each phase starts (load, encode, denoise, decode): ComfyUI's Cancel raises here."""
    comfy.model_management.throw_exception_if_processing_interrupted()
