"""Build the three models from weight sources, bounded in memory, in the planned dtypes, and the pipeline around them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..execution.devices import can_compile, check_fp8_matmul
from ..execution.load_times import LoadTimes
from ..files.file_tensors import FileFeeds
from ..files.sources import SourceDescription
from ..files.weight_source import WeightSource
from ..planning.host_memory import deferred_parts
from ..planning.load_request import LoadRequest, compute_dtypes, fp8_modes
from ..planning.speed_ladder import Arithmetic
from ..quant.compressed_linear import enable_fast_blocks
from ..quant.format_registry import prepare_layers, quantized_on_load
from ..quant.fp8_scope import FP8_SCOPES, fp8_filter
from ..qwen.anatomy import is_text_unit_key, is_transformer_block_key
from ..qwen.architectures import Architecture, empty_text_encoder, empty_transformer, empty_vae
from ..qwen.architectures import processor as arch_processor
from ..qwen.architectures import scheduler as arch_scheduler
from ..qwen.empty_modules import build_empty
from ..qwen.variants import Variant
from ..settings import FP8_FAST
from . import text_processors
from .fill import KeepInFiles, fill_module

LM_HEAD = "lm_head.weight"


def build_transformer(
    source: WeightSource,
    arch: Architecture | None,
    config: dict[str, Any] | None,
    variant: Variant,
    dtype: torch.dtype,
    device: torch.device,
    fp8: str,
    keep_in_files: KeepInFiles | None = None,
    feeds: FileFeeds | None = None,
) -> nn.Module:
    """The transformer from ``arch`` (split files) or a folder's ``config``, filled from ``source``."""
    from diffusers import QwenImageTransformer2DModel

    if config is not None:
        module = build_empty(lambda: QwenImageTransformer2DModel.from_config(config))
    else:
        module = empty_transformer(arch, variant)
    fill_module(
        module,
        source,
        dtype,
        device,
        fp8_linears=fp8_filter(fp8, "transformer", source),
        keep_in_files=keep_in_files,
        feeds=feeds,
    )
    return module.to(device)


def build_vae(
    source: WeightSource,
    arch: Architecture | None,
    config: dict[str, Any] | None,
    input_channels: int,
    dtype: torch.dtype,
    device: torch.device,
) -> nn.Module:
    from diffusers import AutoencoderKLQwenImage

    if config is not None:
        module = build_empty(lambda: AutoencoderKLQwenImage.from_config(config))
    else:
        module = empty_vae(arch, input_channels)
    fill_module(module, source, dtype, device)
    return module.to(device)


class _MissingLmHead(nn.Module):
    """Stands in for an lm_head the file does not carry: editing never needs it, captioning does."""

    def forward(self, *_: Any, **__: Any) -> torch.Tensor:
        from ..errors import QwenFitError

        raise QwenFitError(
            "this text encoder file has no lm_head, which the Layered auto-caption needs: "
            "write a prompt, or use the full qwen_2.5_vl_7b text encoder file."
        )


def build_text_encoder(
    source: WeightSource,
    arch: Architecture | None,
    config: Any | None,
    dtype: torch.dtype,
    device: torch.device,
    fp8: str,
    keep_in_files: KeepInFiles | None = None,
    feeds: FileFeeds | None = None,
) -> nn.Module:
    from transformers import Qwen2_5_VLForConditionalGeneration

    if config is not None:
        module = build_empty(lambda: Qwen2_5_VLForConditionalGeneration(config))
    else:
        module = empty_text_encoder(arch)
    missing = fill_module(
        module,
        source,
        dtype,
        device,
        fp8_linears=fp8_filter(fp8, "text_encoder", source),
        optional=(LM_HEAD,),
        keep_in_files=keep_in_files,
        feeds=feeds,
    )
    if LM_HEAD in missing:
        module.lm_head = _MissingLmHead()
    return module.to(device)


def build_pipeline(
    request: LoadRequest,
    desc: SourceDescription,
    feeds: FileFeeds,
    checkpoint: Callable[[str], None],
    arithmetic: Arithmetic,
    times: LoadTimes,
) -> Any:
    """The diffusers pipeline of ``request``'s files, every weight in host memory in its planned form (or left in
    the files for the background fill), the fast rung's layers switched on; ``checkpoint("load")`` between parts."""
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
        if (on_load := quantized_on_load(kind)) is not None:  # quantized layer by layer after loading
            on_load.quantize(module, FP8_SCOPES[part])
    if arithmetic.kind != "expanded":
        enable_fast_blocks(transformer.transformer_blocks, arithmetic.kind)
    prepare_layers(transformer, can_compile(device))
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
