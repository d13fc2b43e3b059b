"""Fill an empty (meta) module from a WeightSource, one tensor at a time, in the planned dtype.

The host never holds more than the module being built plus one tensor in flight; a module
planned for fp8 storage never holds its Linear weights in bf16. Tensors the caller chooses to
leave in the files become placeholders, with a recipe to read them when they are used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import QwenFitError
from ..files.file_tensors import FileFeeds, FileTensor, placeholder
from ..files.host_memory import TrimEvery, trim_host_heap
from ..files.weight_source import WeightSource
from ..quant.compressed_linear import replace_module
from ..quant.format_registry import format_for, stored_format
from ..settings import FP8

# Decides which Linear layers (by dotted module name) are stored in fp8.
Fp8Filter = Callable[[str], bool]
# Decides which tensors (by state-dict key) stay in the files until they are used.
KeepInFiles = Callable[[str], bool]


def _set_placeholder(module: nn.Module, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """A placeholder of the planned dtype and shape: the engine reads the values when needed."""
    layer, _, leaf = key.rpartition(".")
    owner = module.get_submodule(layer) if layer else module
    empty = placeholder(shape, dtype)
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(empty, requires_grad=False)
    else:
        owner._buffers[leaf] = empty


def _assign(module: nn.Module, key: str, value: torch.Tensor, source: WeightSource) -> None:
    """Put ``value`` in place of the (meta) tensor ``key``: a Parameter stays a Parameter."""
    layer, _, leaf = key.rpartition(".")
    owner = module.get_submodule(layer) if layer else module
    expected = getattr(owner, leaf).shape
    if value.shape != expected:  # the one way a readable file of the wrong model shows up here
        raise QwenFitError(
            f"{source.names} holds {source.to_file_key(key)} of shape {tuple(value.shape)}, where this model needs "
            f"{tuple(expected)}: the file belongs to another model. Pick the matching file."
        )
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value


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
    keep_in_files: KeepInFiles | None = None,
    feeds: FileFeeds | None = None,
) -> list[str]:
    """Load every parameter and persistent buffer of ``module`` from ``source``.

    Linear layers a file stores in a format kept as stored become that format's layer, holding the stored bytes;
    other Linear layers accepted by ``fp8_linears`` become the fp8 format's (fp8 data + scale); each layer is
    built by its format (optim/quant/format_registry.py). Keys in
    ``optional`` may be missing from the files; they are returned so the caller can deal with
    them. Any other missing key is an error naming the file.

    Keys accepted by ``keep_in_files`` are not read when their planned form is the stored bytes or a
    cast of them: they become placeholders (one element each) and their recipes go to ``feeds`` (see
    optim/files/file_tensors.py), which ``keep_in_files`` then requires.
    """
    fp32_modules = _keep_in_fp32(module)
    linears = {name for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    stored_layers = {name: found for name in linears if (found := stored_format(source, f"{name}.weight"))}
    fp8 = format_for(FP8)
    fp8_layers = {name for name in linears - set(stored_layers) if fp8_linears is not None and fp8_linears(name)}
    # Every replaced Linear with its format and what the files hold for it: the fp8 ones, then the stored ones.
    layers = {**{name: (fp8, None) for name in sorted(fp8_layers)}, **dict(sorted(stored_layers.items()))}
    missing: list[str] = []
    trim = TrimEvery()  # keeps the heap near what the plan keeps (weights quantized on load make temporaries)
    in_files: dict[str, FileTensor] = {}

    def stays_in_files(key: str) -> bool:
        return keep_in_files is not None and keep_in_files(key)

    keys = list(module.state_dict(keep_vars=True).keys())
    for key in keys:
        layer, _, leaf = key.rpartition(".")
        if layer in layers:
            continue  # handled below, weight and bias together
        if found := stored_format(source, key):  # not a Linear's (an embedding table): expand now
            fmt, stored = found
            value = fmt.expand(stored, source, key, _target_dtype(key, torch.float32, compute_dtype, fp32_modules))
            _assign(module, key, value.to(device), source)
            continue
        if not source.has(key):
            missing.append(key)
            continue
        if stays_in_files(key) and not source.is_fp8(key):
            file, file_key = source.locate(key)
            stored = file.tensors[file_key].dtype
            _set_placeholder(module, key, file.shape(file_key), _target_dtype(key, stored, compute_dtype, fp32_modules))
            in_files[key] = FileTensor(file, file_key)
            continue
        if source.is_fp8(key):
            value = source.read_fp8(key).dequantize(compute_dtype)
        else:
            value = source.read(key)
            value = value.to(_target_dtype(key, value.dtype, compute_dtype, fp32_modules))
        _assign(module, key, value.to(device), source)
        trim.add(value.numel() * value.element_size())
    for layer, (fmt, stored) in layers.items():
        weight_key = f"{layer}.weight"
        if not source.has(weight_key):
            missing.append(weight_key)
            continue
        linear = module.get_submodule(layer)

        def bias(recipes: dict[str, FileTensor] | None, layer: str = layer) -> torch.Tensor | None:
            return _layer_bias(source, layer, compute_dtype, device, recipes)

        shape = (linear.out_features, linear.in_features)
        read_later = stays_in_files(weight_key)
        new, recipes = fmt.layer(stored, source, layer, shape, bias, compute_dtype, device, read_later)
        replace_module(module, layer, new)
        in_files.update(recipes)
        if not recipes:  # read now: the format's temporaries count towards the next trim
            trim.add(fmt.load_temporary_bytes_per_weight * shape[0] * shape[1])
    trim_host_heap()
    if in_files:
        assert feeds is not None, "keep_in_files needs feeds to hand the recipes to the engine"
        feeds.add(module, in_files)
    unexpected = [k for k in missing if k not in optional]
    if unexpected:
        shown = ", ".join(source.to_file_key(k) for k in unexpected[:5])
        raise QwenFitError(
            f"{source.names} lacks {len(unexpected)} tensor(s) the model needs (e.g. {shown}): the file is "
            "incomplete or belongs to another model. Pick the matching file, or download it again."
        )
    return missing


def _layer_bias(
    source: WeightSource,
    layer: str,
    compute_dtype: torch.dtype,
    device: torch.device | None,
    recipes: dict[str, FileTensor] | None = None,
) -> torch.Tensor | None:
    """The bias of a Linear being replaced: read now onto ``device``, or, given ``recipes``, a placeholder whose
    recipe is added there (it stays in the files). None when the layer has none."""
    bias_key = f"{layer}.bias"
    if not source.has(bias_key):
        return None
    if recipes is None:
        return source.read(bias_key).to(device=device, dtype=compute_dtype)
    bias_file, bias_file_key = source.locate(bias_key)
    recipes[bias_key] = FileTensor(bias_file, bias_file_key)
    return placeholder(bias_file.shape(bias_file_key), compute_dtype)
