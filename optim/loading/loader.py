"""Load a Qwen-Image pipeline (a diffusers folder or ComfyUI split files), offline, safetensors only.

Only loading: what the request's files are, the speed rung and the host plan are decided in planning
(``planning/load_request.py``, ``arithmetic_choice.py``, ``host_memory.py``), before anything loads; the
plan preview asks the same functions without this module.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import replace

import torch

from ..errors import InternalError, QwenFitError
from ..execution.arena_fill import begin_load
from ..execution.devices import resolve_gpus
from ..execution.load_times import LoadTimes
from ..execution.loaded_pipeline import LoadedPipeline, place_pipeline, release_memory
from ..files.file_tensors import FileFeeds
from ..planning.arithmetic_choice import arithmetic_for
from ..planning.host_memory import plan_host_memory_for
from ..planning.load_request import LoadRequest, describe
from .assemble import build_pipeline

log = logging.getLogger("qwenfit")


def load_pipeline(request: LoadRequest, checkpoint: Callable[[str], None] | None = None) -> LoadedPipeline:
    """Load and place a pipeline as ``request`` says, one tensor at a time, straight into the
    planned dtype. Nothing is downloaded; only safetensors are read (never pickles).

    ``checkpoint("load")`` is called between components; raising from it (ComfyUI's Cancel) stops
    the load. On failure or cancel everything partly loaded is released before the error propagates.
    """
    times = LoadTimes()
    begin_load()
    desc = describe(request)
    times.mark("file headers")
    device = torch.device(request.device)
    pipeline = None
    cancels: list[BaseException] = []

    def check(phase: str) -> None:
        """``checkpoint``, remembering what it raised: a cancel propagates as it is, not as a bad file."""
        if checkpoint is None:
            return
        try:
            checkpoint(phase)
        except BaseException as cancel:
            cancels.append(cancel)
            raise

    try:
        offload = request.offload
        gpus, notes = resolve_gpus(offload, device)
        arithmetic = arithmetic_for(request, desc, gpus)
        host = plan_host_memory_for(request, desc, arithmetic)
        check("load")
        feeds = FileFeeds()
        pipeline = build_pipeline(request, desc, feeds, check, arithmetic, times)
        pipeline.set_progress_bar_config(disable=True)
        loaded = place_pipeline(pipeline, request, desc.variant, desc.identity, gpus, notes, arithmetic, host, feeds)
        times.mark("placing")
    except QwenFitError:
        pipeline = None
        release_memory()
        raise
    except BaseException as exc:  # a corrupt file, a wrong shape, or a cancel: nothing partly loaded stays
        pipeline = None
        # The traceback's frames hold the partly built models; whoever keeps the error (ComfyUI's report)
        # must not keep them too.
        traceback.clear_frames(exc.__traceback__)
        release_memory()
        # A cancel propagates as it is: ComfyUI's is an Exception in 0.3.75 and a BaseException since.
        if any(exc is cancel for cancel in cancels) or not isinstance(exc, Exception):
            log.info(
                "QwenFit: loading %s stopped (%s); cleaned up: nothing partly loaded is kept, memory given back",
                request.source.name, type(exc).__name__,
            )  # fmt: skip
            raise
        # Bad files are reported by the readers and the fill as QwenFitError (naming the file and the fix);
        # anything else is ours, and blaming the user's files would send them re-downloading good ones.
        log.exception("QwenFit: loading %s failed inside QwenFit", request.source.name)
        raise InternalError(f"loading '{request.source.name}' failed ({type(exc).__name__}: {exc}).") from exc
    loaded = replace(loaded, load_times=times)
    log.info("QwenFit loaded %s:\n%s", request.source.name, loaded.describe_default_plan())
    return loaded
