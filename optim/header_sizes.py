"""Model sizes from safetensors headers alone: what the planner needs, before anything loads.

The loader builds each model empty (meta tensors), fills it in the planned dtypes and swaps Linear
layers for their fp8 / int8 / nf4 forms. Here the same decisions are taken from the file headers
(shapes, which weights the file stores in fp8) and applied to meta tensors only, then the result is
measured by ``model_sizes.measure``, the function the engine uses on the loaded pipeline. So the
preview's sizes are the engine's sizes, without reading a single weight.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

from .architectures import empty_text_encoder, empty_transformer, empty_vae
from .assemble import FP8_ALL, FP8_AS_STORED, FP8_NONE, text_encoder_fp8_filter, transformer_fp8_filter
from .devices import compute_dtype
from .fp8_linear import Fp8Linear, replace_linear
from .loading import fp8_mode
from .model_sizes import ModelSizes, measure
from .quantized_linear import NF4_BLOCK, QUANTIZED, Fp8MatmulLinear, Int8Linear, Nf4Linear
from .settings import PrecisionSettings
from .sources import SourceDescription
from .weights.fp8 import Fp8Layout, Fp8Weight
from .weights.source import WeightSource

META = torch.device("meta")
LM_HEAD = "lm_head"


def _meta(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=META)


def _fp8_layers(module: nn.Module, mode: str, scope: Callable[[str], bool], source: WeightSource) -> set[str]:
    """The Linear layers the loader stores in fp8 (same rule as assemble._fp8_filter)."""
    if mode == FP8_NONE:
        return set()
    linears = [name for name, m in module.named_modules() if isinstance(m, nn.Linear) and scope(name)]
    if mode == FP8_ALL:
        return set(linears)
    assert mode == FP8_AS_STORED
    return {n for n in linears if source.has(f"{n}.weight") and source.is_fp8(f"{n}.weight")}


def _fill_meta(module: nn.Module, source: WeightSource, dtype: torch.dtype, fp8_layers: set[str]) -> set[str]:
    """Give every tensor the shape the file stores and the dtype the loader would give it; returns the
    state-dict keys the file lacks."""
    fp32_modules = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    missing: set[str] = set()
    for key, tensor in module.state_dict(keep_vars=True).items():
        layer, _, leaf = key.rpartition(".")
        if layer in fp8_layers:
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
    for layer in fp8_layers:
        weight_key, bias_key = f"{layer}.weight", f"{layer}.bias"
        if not source.has(weight_key):
            missing.add(weight_key)
            continue
        weight = Fp8Weight(
            _meta(source.shape(weight_key), torch.float8_e4m3fn), _meta((), torch.float32), Fp8Layout.PLAIN
        )
        bias = _meta(source.shape(bias_key), dtype) if source.has(bias_key) else None
        replace_linear(module, layer, weight, bias)
    return missing


def _shell(cls: type[nn.Module], out_features: int, in_features: int, bias: nn.Parameter | None) -> nn.Module:
    """An instance of a compressed Linear class holding meta buffers only (its __init__ would quantize)."""
    layer = cls.__new__(cls)
    nn.Module.__init__(layer)
    layer.out_features, layer.in_features = out_features, in_features
    layer.bias = bias
    return layer


def _compressed(kind: str, layer: nn.Module) -> nn.Module:
    """What ``quantize_linears`` turns ``layer`` into, with meta buffers of the same shapes and dtypes."""
    out_features, in_features = layer.out_features, layer.in_features
    if isinstance(layer, Fp8Linear):
        dense = layer.bias.dtype if layer.bias is not None else torch.bfloat16
    else:
        dense = layer.weight.dtype
    bias = layer.bias
    cls = QUANTIZED[kind]
    shell = _shell(cls, out_features, in_features, bias)
    if cls is Int8Linear:
        shell.register_buffer("weight_int8", _meta((out_features, in_features), torch.int8))
        shell.register_buffer("weight_scale", _meta((out_features, 1), dense))
    elif cls is Nf4Linear:
        numel = out_features * in_features
        shell.compute_dtype = dense
        shell.register_buffer("weight_nf4", _meta((numel // 2,), torch.uint8))
        shell.register_buffer("weight_absmax", _meta((numel // NF4_BLOCK,), torch.float32))
        shell.register_buffer("codes", _meta((16,), torch.float32))
    elif cls is Fp8MatmulLinear:
        shell.register_buffer("weight_fp8", _meta((out_features, in_features), torch.float8_e4m3fn))
        shell.register_buffer("weight_scale", _meta((1, out_features), torch.float32))
    else:
        raise ValueError(f"no size model for {kind}")
    return shell


def _compress(root: nn.Module, kind: str, keep: Callable[[str], bool]) -> None:
    names = [n for n, m in root.named_modules() if isinstance(m, nn.Linear | Fp8Linear) and keep(n)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, _compressed(kind, getattr(parent, child)))


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
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    with init_empty_weights():
        return (
            QwenImageTransformer2DModel.from_config(desc.folder_config("transformer")).eval(),
            Qwen2_5_VLForConditionalGeneration(_text_encoder_config(desc)).eval(),
            AutoencoderKLQwenImage.from_config(desc.folder_config("vae")).eval(),
        )


def sizes_from_headers(desc: SourceDescription, precision: PrecisionSettings, device: torch.device) -> ModelSizes:
    """The ``ModelSizes`` the engine would measure after loading ``desc`` with ``precision`` on ``device``.

    Reads only what ``desc`` already holds (headers and configs); builds nothing but meta tensors.
    """
    transformer, text_encoder, vae = _empty_models(desc)
    parts = (
        ("transformer", transformer, desc.transformer, transformer_fp8_filter),
        ("text_encoder", text_encoder, desc.text_encoder, text_encoder_fp8_filter),
    )
    for part, module, source, scope in parts:
        choice = getattr(precision, part)
        fp8 = _fp8_layers(module, fp8_mode(choice, source), scope, source)
        missing = _fill_meta(module, source, compute_dtype(choice, device), fp8)
        if part == "text_encoder" and f"{LM_HEAD}.weight" in missing:
            module.lm_head = nn.Module()  # the loader puts a weightless stand-in there
        if choice in QUANTIZED:
            _compress(module, choice, scope)
    _fill_meta(vae, desc.vae, compute_dtype(precision.vae, device), set())
    return measure(SimpleNamespace(transformer=transformer, text_encoder=text_encoder, vae=vae))
