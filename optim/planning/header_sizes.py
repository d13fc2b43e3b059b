"""Model sizes from safetensors headers alone: what the planner needs, before anything loads.

The loader builds each model empty (meta tensors), fills it in the planned dtypes and swaps Linear
layers for their fp8 / int8 / nf4 forms. Here the same decisions are taken from the file headers
(shapes, which weights the file stores in fp8) and applied to meta tensors only, then the result is
measured by ``model_sizes.measure``, the function the engine uses on the loaded pipeline. So the
preview's sizes are the engine's sizes, without reading a single weight.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from ..files.sources import SourceDescription
from ..files.weight_source import WeightSource
from ..quant.compressed_linear import replace_module
from ..quant.dtypes import compute_dtype
from ..quant.format_registry import format_for, quantized_on_load, stored_format
from ..quant.fp8_scope import FP8_SCOPES, fp8_filter, fp8_mode
from ..qwen.architectures import empty_text_encoder, empty_transformer, empty_vae
from ..qwen.empty_modules import build_empty
from ..settings import FP8, PrecisionSettings
from .model_sizes import ModelSizes, measure

META = torch.device("meta")
LM_HEAD = "lm_head"


def _meta(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=META)


def _fp8_layers(module: nn.Module, component: str, mode: str, source: WeightSource) -> set[str]:
    """The Linear layers the loader stores in fp8 (the loader's own rule, optim/quant/fp8_scope.py)."""
    stored_fp8 = fp8_filter(mode, component, source)
    if stored_fp8 is None:
        return set()
    return {name for name, m in module.named_modules() if isinstance(m, nn.Linear) and stored_fp8(name)}


def _fill_meta(module: nn.Module, source: WeightSource, dtype: torch.dtype, fp8_layers: set[str]) -> set[str]:
    """Give every tensor the shape the file stores and the dtype the loader would give it; returns the
    state-dict keys the file lacks."""
    fp32_modules = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    missing: set[str] = set()
    linears = {name for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    stored_layers = {name: found for name in linears if (found := stored_format(source, f"{name}.weight"))}
    # Every replaced Linear with its format (optim/quant/format_registry.py): fp8 ones, then stored ones.
    layers = {**{name: (format_for(FP8), None) for name in fp8_layers}, **stored_layers}
    for key, tensor in module.state_dict(keep_vars=True).items():
        layer, _, leaf = key.rpartition(".")
        if layer in layers:
            continue
        if not source.has(key):
            missing.add(key)
            continue
        target = tensor.dtype
        if target.is_floating_point:  # integer buffers keep their type, as in the loader
            target = torch.float32 if any(part in fp32_modules for part in key.split(".")) else dtype
        owner = module.get_submodule(layer) if layer else module
        empty = _meta(source.shape(key), target)
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(empty, requires_grad=False)
        else:
            owner._buffers[leaf] = empty
    for layer, (fmt, stored) in layers.items():
        weight_key, bias_key = f"{layer}.weight", f"{layer}.bias"
        if not source.has(weight_key):
            missing.add(weight_key)
            continue
        linear = module.get_submodule(layer)
        bias = nn.Parameter(_meta(source.shape(bias_key), dtype), False) if source.has(bias_key) else None
        replace_module(module, layer, fmt.empty(stored, linear.out_features, linear.in_features, bias, dtype))
    return missing


def _text_encoder_config(desc: SourceDescription):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig.from_pretrained(str(desc.folder / "text_encoder"), local_files_only=True)


def _empty_models(desc: SourceDescription) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The three models on the meta device, from the shipped architecture or the folder's configs."""
    if desc.folder is None:
        return (
            empty_transformer(desc.architecture, desc.variant),
            empty_text_encoder(desc.architecture),
            empty_vae(desc.architecture, desc.vae_channels),
        )
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    text_encoder_config = _text_encoder_config(desc)
    return (
        build_empty(lambda: QwenImageTransformer2DModel.from_config(desc.folder_config("transformer"))),
        build_empty(lambda: Qwen2_5_VLForConditionalGeneration(text_encoder_config)),
        build_empty(lambda: AutoencoderKLQwenImage.from_config(desc.folder_config("vae"))),
    )


def sizes_from_headers(desc: SourceDescription, precision: PrecisionSettings, device: torch.device) -> ModelSizes:
    """The ``ModelSizes`` the engine would measure after loading ``desc`` with ``precision`` on ``device``.

    Reads only what ``desc`` already holds (headers and configs); builds nothing but meta tensors.
    """
    transformer, text_encoder, vae = _empty_models(desc)
    parts = (("transformer", transformer, desc.transformer), ("text_encoder", text_encoder, desc.text_encoder))
    for part, module, source in parts:
        choice = getattr(precision, part)
        scope = FP8_SCOPES[part]
        fp8 = _fp8_layers(module, part, fp8_mode(choice, source), source)
        missing = _fill_meta(module, source, compute_dtype(choice, device), fp8)
        if part == "text_encoder" and f"{LM_HEAD}.weight" in missing:
            module.lm_head = nn.Module()  # the loader puts a weightless stand-in there
        if (on_load := quantized_on_load(choice)) is not None:
            on_load.size_as_quantized(module, scope)
    _fill_meta(vae, desc.vae, compute_dtype(precision.vae, device), set())
    return measure(SimpleNamespace(transformer=transformer, text_encoder=text_encoder, vae=vae))
