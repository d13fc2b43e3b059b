"""Weight formats kept as the files store them: one class per family, registered once in ``STORED_FORMATS``.

A file may store a Linear's weight in a format the pack never re-encodes: GGML blocks in a GGUF file
(optim/quant/gguf.py), Comfy-Org's int8 / mxfp8 / nvfp4 layers (optim/quant/comfy_quant_formats.py). Each
family here says which weights of a source it holds, sizes them from the headers, builds their layers (read
now, or left in the files for the background fill), and expands its non-Linear tensors. The loader's fill, the
header-only sizes and the host-memory plan ask this registry and never name a format; adding a family is one
class and one entry in ``STORED_FORMATS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ..errors import QwenFitError
from ..files.file_tensors import FileTensor, placeholder
from ..files.gguf_file import GgufTensor
from ..files.weight_source import WeightSource
from .comfy_quant_formats import comfy_quant_format, comfy_quant_linear, empty_comfy_quant
from .gguf import compile_expansions, dequantize_blocks, gguf_format, gguf_linear

# A Linear's bias, read now or (with a recipes dict) left in the files: the loader's rule for every layer.
BiasReader = Callable[[dict[str, FileTensor] | None], torch.Tensor | None]


class StoredFormat(Protocol):
    """A family of weight formats kept as stored."""

    name: ClassVar[str]

    def stored(self, source: WeightSource, key: str) -> Any | None:
        """What the files hold for tensor ``key`` (as the module names it) in this family (None: not this family's)."""

    def holds(self, source: WeightSource, file_key: str, info: Any) -> bool:
        """True for a tensor as the files name it (``info``: its header entry) that this family keeps as stored."""

    def empty(self, stored: Any, out_features: int, in_features: int, bias: nn.Parameter | None, dtype) -> nn.Module:
        """The layer on the meta device, sized exactly from the headers."""

    def layer(
        self,
        stored: Any,
        source: WeightSource,
        layer: str,
        shape: tuple[int, int],
        bias: BiasReader,
        dtype: torch.dtype,
        device: torch.device,
        in_files: bool,
    ) -> tuple[nn.Module, dict[str, FileTensor]]:
        """The layer holding the stored tensors (read now), or placeholders and their recipes by state-dict key."""

    def expand(self, stored: Any, source: WeightSource, key: str, dtype: torch.dtype) -> torch.Tensor:
        """A non-Linear tensor of this family (an embedding table), expanded to ``dtype`` now."""

    def prepare(self, module: nn.Module, can_compile: bool) -> None:
        """After loading: anything the family's layers need before they run."""


class GgufBlocks:
    """GGML quantized blocks in GGUF files (ComfyUI-GGUF's): one GgufLinear class per GGML type."""

    name = "GGUF blocks"

    def stored(self, source: WeightSource, key: str):
        return source.gguf_blocks(key)

    def holds(self, source, file_key, info):
        return isinstance(info, GgufTensor) and info.quantized

    def empty(self, stored, out_features, in_features, bias, dtype):
        return gguf_format(stored.type_name).empty(*stored.shape, bias, dtype)

    def layer(self, stored, source, layer, shape, bias, dtype, device, in_files):
        file, file_key = source.locate(f"{layer}.weight")
        recipes: dict[str, FileTensor] = {}
        bias_value = bias(recipes if in_files else None)
        if in_files:
            blocks = placeholder(stored.block_shape, torch.uint8)
            recipes[f"{layer}.weight_gguf"] = FileTensor(file, file_key)
        else:
            blocks = file.read(file_key).to(device)
        return gguf_linear(stored, blocks, bias_value), recipes

    def expand(self, stored, source, key, dtype):
        file, file_key = source.locate(key)
        return dequantize_blocks(stored, file.read(file_key), dtype)

    def prepare(self, module, can_compile):
        if can_compile:  # a K-quant expansion's dozen elementwise passes fuse into one
            compile_expansions(module)


class ComfyQuantLayers:
    """Comfy-Org's quantized layers (int8 with or without ConvRot, mxfp8, nvfp4), described by the file's
    per-layer metadata; one class per format."""

    name = "Comfy-Org quantized layers"

    def stored(self, source: WeightSource, key: str):
        return source.comfy_quant(key)

    def holds(self, source, file_key, info):
        return source.comfy_quant_key(file_key)

    def empty(self, stored, out_features, in_features, bias, dtype):
        return empty_comfy_quant(stored, out_features, in_features, bias)

    def layer(self, stored, source, layer, shape, bias, dtype, device, in_files):
        out_features, in_features = shape
        cls = comfy_quant_format(stored)
        file, _ = source.locate(f"{layer}.weight")
        file_keys = {
            "weight": stored.weight_key,
            "weight_scale": stored.scale_key,
            "weight_scale_2": stored.global_scale_key,
        }
        # Sizes checked from the header first: a layer left in the files is read only when used.
        header = {
            s: torch.empty(file.shape(k), dtype=file.tensors[k].dtype, device="meta") for s, k in file_keys.items() if k
        }
        _fitting(source, stored, header, shape)
        recipes: dict[str, FileTensor] = {}
        bias_value = bias(recipes if in_files else None)
        if in_files:
            specs = cls.buffer_specs(out_features, in_features, dtype)
            tensors = {}
            for name, suffix in cls.stored_as.items():
                tensors[suffix] = placeholder(*specs[name])
                recipes[f"{layer}.{name}"] = FileTensor(file, file_keys[suffix])
        else:
            tensors = {suffix: file.read(file_keys[suffix]).to(device) for suffix in cls.stored_as.values()}
        return _fitting(source, stored, tensors, shape, bias_value), recipes

    def expand(self, stored, source, key, dtype):
        raise QwenFitError(f"{source.names}: {key} is stored as a quantized layer but is no Linear weight.")

    def prepare(self, module, can_compile):
        pass


def _fitting(source: WeightSource, spec, stored: dict, shape: tuple[int, int], bias=None) -> nn.Module:
    """The Comfy-Org layer holding ``stored``, or the fix when its tensors do not fit the model's layer."""
    try:
        return comfy_quant_linear(spec, stored, *shape, bias)
    except ValueError as exc:
        raise QwenFitError(
            f"{source.names}: {spec.layer} ({spec.format_name}) does not fit the model's {shape[0]}x{shape[1]} "
            f"layer ({exc}): the file is corrupt or belongs to another model. Pick the matching file."
        ) from None


STORED_FORMATS: tuple[StoredFormat, ...] = (GgufBlocks(), ComfyQuantLayers())


def stored_format(source: WeightSource, key: str) -> tuple[StoredFormat, Any] | None:
    """The family that keeps tensor ``key`` as stored, and what the files hold for it (None: no family's)."""
    for family in STORED_FORMATS:
        if (stored := family.stored(source, key)) is not None:
            return family, stored
    return None


def kept_as_stored(source: WeightSource, file_key: str, info: Any) -> bool:
    """True for a tensor as the files name it (``info``: its header entry) that some family keeps as stored."""
    return any(family.holds(source, file_key, info) for family in STORED_FORMATS)


def prepare_stored_layers(module: nn.Module, can_compile: bool) -> None:
    """Let every family prepare its layers of a loaded ``module``."""
    for family in STORED_FORMATS:
        family.prepare(module, can_compile)
