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
from typing import Any

import torch

from ..errors import InternalError, QwenFitError
from ..execution.arena_fill import begin_load
from ..execution.devices import can_compile, check_fp8_matmul, resolve_gpus
from ..execution.engine import EngineOptions, PipelineEngine
from ..execution.load_times import LoadTimes
from ..execution.loaded_pipeline import LoadedPipeline, release_memory
from ..execution.lora_updates import LoraUpdates
from ..execution.whole_model_offload import place_whole_model
from ..files.file_tensors import FileFeeds
from ..files.sources import SourceDescription
from ..planning.arithmetic_choice import arithmetic_for
from ..planning.components import describe_components
from ..planning.host_memory import deferred_parts, plan_host_memory_for
from ..planning.load_request import LoadRequest, compute_dtypes, describe, fp8_modes
from ..planning.model_sizes import measure
from ..planning.speed_ladder import Arithmetic
from ..quant.compressed_linear import enable_fast_blocks, reset_fast_arithmetic
from ..quant.formats import QUANTIZED, quantize_linears
from ..quant.fp8_scope import FP8_SCOPES
from ..quant.gguf import compile_expansions
from ..qwen.anatomy import is_text_unit_key, is_transformer_block_key
from ..qwen.architectures import processor as arch_processor
from ..qwen.architectures import scheduler as arch_scheduler
from ..qwen.variants import Variant
from ..settings import FP8_FAST
from . import text_processors
from .assemble import build_text_encoder, build_transformer, build_vae

log = logging.getLogger("qwenfit")


def _build(
    request: LoadRequest,
    desc: SourceDescription,
    feeds: FileFeeds,
    checkpoint: Callable[[str], None],
    arithmetic: Arithmetic,
    times: LoadTimes,
) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline, QwenImageLayeredPipeline
    from transformers import Qwen2_5_VLConfig

    device = torch.device(request.device)
    precision = request.precision
    dtypes = compute_dtypes(request)
    # Weights load into host memory; the engine (or diffusers' offload) places them afterwards.
    home = torch.device("cpu")
    folder = desc.folder
    te_config = (
        Qwen2_5_VLConfig.from_pretrained(str(folder / "text_encoder"), local_files_only=True) if folder else None
    )
    fp8 = fp8_modes(request, desc)
    transformer_fp8, text_encoder_fp8 = fp8["transformer"], fp8["text_encoder"]
    defer = deferred_parts(request, arithmetic)
    transformer = build_transformer(
        desc.transformer,
        desc.architecture,
        desc.folder_config("transformer"),
        desc.variant,
        dtypes["transformer"],
        home,
        fp8=transformer_fp8,
        keep_in_files=is_transformer_block_key if defer["transformer"] else None,
        feeds=feeds,
    )
    times.mark("transformer")
    checkpoint("load")
    text_encoder = build_text_encoder(
        desc.text_encoder,
        desc.architecture,
        te_config,
        dtypes["text_encoder"],
        home,
        fp8=text_encoder_fp8,
        keep_in_files=is_text_unit_key if defer["text_encoder"] else None,
        feeds=feeds,
    )
    if FP8_FAST in (precision.transformer, precision.text_encoder):
        check_fp8_matmul(device)
    for part, module in (("transformer", transformer), ("text_encoder", text_encoder)):
        kind = getattr(precision, part)
        if part == "transformer" and arithmetic.store_as is not None:  # the fast rung's 8-bit form
            kind = arithmetic.store_as
        if kind in QUANTIZED:  # weight-only integer formats: quantized layer by layer after loading
            quantize_linears(module, kind, FP8_SCOPES[part])
    if arithmetic.kind != "expanded":
        enable_fast_blocks(transformer.transformer_blocks, arithmetic.kind)
    if desc.transformer.holds_gguf() and can_compile(device):
        compile_expansions(transformer)
    times.mark("text encoder")
    checkpoint("load")
    vae = build_vae(desc.vae, desc.architecture, desc.folder_config("vae"), desc.vae_channels, dtypes["vae"], home)
    times.mark("VAE")
    tokenizer = text_processors.tokenizer(desc.tokenizer_dir)
    if folder is not None:
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler"), local_files_only=True)
        proc = text_processors.folder_processor(folder / "processor")
    else:
        scheduler, proc = arch_scheduler(desc.architecture), arch_processor(desc.architecture, tokenizer)
    pipeline_cls = QwenImageLayeredPipeline if desc.variant is Variant.LAYERED else QwenImageEditPlusPipeline
    return pipeline_cls(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=proc,
        transformer=transformer,
    )


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
        pipeline = _build(request, desc, feeds, check, arithmetic, times)
        pipeline.set_progress_bar_config(disable=True)
        whole_model = offload.mode == "model"
        components = describe_components(pipeline, str(device), whole_model)
        engine = None
        if whole_model:
            sizes = measure(pipeline)
            place_whole_model(pipeline, device)
        else:
            compiled = arithmetic.compiled and can_compile(device)
            options = EngineOptions(offload, gpus, compile_blocks=compiled, arithmetic=arithmetic)
            engine = PipelineEngine(pipeline, device, options, host, components, notes, feeds)
            sizes = engine.sizes
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
    loaded = LoadedPipeline(
        pipeline=pipeline,
        variant=desc.variant,
        model=desc.identity,
        request=request,
        sizes=sizes,
        components=components,
        gpus=gpus,
        engine=engine,
        host=host,
        notes=notes,
        arithmetic=arithmetic,
        load_times=times,
        scheduler_config=dict(pipeline.scheduler.config),
        lora_updates=LoraUpdates(pipeline.transformer) if engine is None else None,
    )
    log.info("QwenFit loaded %s:\n%s", request.source.name, loaded.describe_default_plan())
    return loaded


def switch_speed(loaded: LoadedPipeline, request: LoadRequest) -> LoadedPipeline | None:
    """``loaded`` moved to ``request``'s speed rung without loading again, or None when ``request`` differs
    otherwise or its rung needs the blocks stored in another form (quantized on load): then load anew.
    An fp8 or int8 file switches between exact, fast and fastest in place."""
    same_rest = replace(request, precision=replace(request.precision, speed=loaded.request.precision.speed))
    if loaded.engine is None or same_rest != loaded.request:
        return None
    arithmetic = arithmetic_for(request, describe(request), loaded.gpus)
    if arithmetic.store_as != loaded.arithmetic.store_as:
        return None
    blocks = loaded.pipeline.transformer.transformer_blocks
    reset_fast_arithmetic(blocks)
    if arithmetic.kind != "expanded":
        enable_fast_blocks(blocks, arithmetic.kind)
    device = torch.device(request.device)
    loaded.engine.use_arithmetic(arithmetic, arithmetic.compiled and can_compile(device))
    log.info("QwenFit: %s switched to %s without loading again", request.source.name, arithmetic.describe())
    return replace(loaded, request=request, arithmetic=arithmetic)
