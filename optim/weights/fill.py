"""Fill an empty (meta) module from a WeightSource, one tensor at a time, in the planned dtype.

The host never holds more than the module being built plus one tensor in flight; a module
planned for fp8 storage never holds its Linear weights in bf16.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate.utils import set_module_tensor_to_device
from torch import nn

from ..errors import QwenFitError
from ..fp8_linear import replace_linear
from ..host_memory import TrimEvery, trim_host_heap
from .fp8 import Fp8Layout, Fp8Weight, quantize_absmax
from .source import WeightSource

# Decides which Linear layers (by dotted module name) are stored in fp8.
Fp8Filter = Callable[[str], bool]


def _keep_in_fp32(module: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(module, "_keep_in_fp32_modules", None) or ())


def _target_dtype(name: str, stored: torch.dtype, compute: torch.dtype, fp32_modules: tuple[str, ...]) -> torch.dtype:
    if not stored.is_floating_point and stored not in (torch.float8_e4m3fn, torch.float8_e5m2):
        return stored  # integer buffers keep their type
    if any(part in fp32_modules for part in name.split(".")):
        return torch.float32
    return compute


def fill_module(
    module: nn.Module,
    source: WeightSource,
    compute_dtype: torch.dtype,
    device: torch.device,
    fp8_linears: Fp8Filter | None = None,
    optional: tuple[str, ...] = (),
    deltas: dict[str, torch.Tensor] | None = None,
) -> list[str]:
    """Load every parameter and persistent buffer of ``module`` from ``source``.

    Linear layers accepted by ``fp8_linears`` become Fp8Linear (fp8 data + scale). ``deltas`` (LoRA) are
    added to the dense weight of the named Linear layers before it is stored. Keys in
    ``optional`` may be missing from the files; they are returned so the caller can deal with
    them. Any other missing key is an error naming the file.
    """
    fp32_modules = _keep_in_fp32(module)
    linears = {name for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    fp8_layers = {name for name in linears if fp8_linears is not None and fp8_linears(name)}
    missing: list[str] = []
    trim = TrimEvery()
    keys = list(module.state_dict(keep_vars=True).keys())
    for key in keys:
        layer, _, leaf = key.rpartition(".")
        if layer in fp8_layers:
            continue  # handled below, weight and bias together
        if not source.has(key):
            missing.append(key)
            continue
        delta = deltas.get(layer) if deltas and leaf == "weight" else None
        if delta is not None:  # LoRA: add in float32, then store in the planned dtype
            dense = source.read_fp8(key).dequantize(torch.float32) if source.is_fp8(key) else source.read(key).float()
            value = (dense + delta).to(_target_dtype(key, torch.float32, compute_dtype, fp32_modules))
        elif source.is_fp8(key):
            value = source.read_fp8(key).dequantize(compute_dtype)
        else:
            value = source.read(key)
            value = value.to(_target_dtype(key, value.dtype, compute_dtype, fp32_modules))
        set_module_tensor_to_device(module, key, device, value=value, dtype=value.dtype)
        trim.add(value.numel() * value.element_size())
    for layer in sorted(fp8_layers):
        weight_key = f"{layer}.weight"
        if not source.has(weight_key):
            missing.append(weight_key)
            continue
        delta = deltas.get(layer) if deltas else None
        if delta is not None:  # LoRA on an fp8 layer: merge densely, then quantize again
            stored = (
                source.read_fp8(weight_key).dequantize(torch.float32)
                if source.is_fp8(weight_key)
                else source.read(weight_key).float()
            )
            data, scale = quantize_absmax(stored + delta)
            weight = Fp8Weight(data=data, scale=scale, layout=Fp8Layout.SCALED)
        elif source.is_fp8(weight_key):
            weight = source.read_fp8(weight_key)
        else:  # a bf16/fp32 file planned for fp8 storage: quantize this one tensor now
            data, scale = quantize_absmax(source.read(weight_key))
            weight = Fp8Weight(data=data, scale=scale, layout=Fp8Layout.SCALED)
        weight = Fp8Weight(weight.data.to(device), weight.scale.to(device), weight.layout)
        bias_key = f"{layer}.bias"
        bias = source.read(bias_key).to(device=device, dtype=compute_dtype) if source.has(bias_key) else None
        replace_linear(module, layer, weight, bias)
        trim.add(weight.data.numel() * 4)
    trim_host_heap()
    unexpected = [k for k in missing if k not in optional]
    if unexpected:
        shown = ", ".join(source.to_file_key(k) for k in unexpected[:5])
        raise QwenFitError(
            f"{source.names} lacks {len(unexpected)} tensor(s) the model needs (e.g. {shown}): the file is "
            "incomplete or belongs to another model. Pick the matching file, or download it again."
        )
    return missing
