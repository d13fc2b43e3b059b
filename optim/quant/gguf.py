"""GGUF weights as the file keeps them (ComfyUI-GGUF's Qwen-Image files): raw GGML blocks, expanded where used.

Each GGML type is its own layer class (``gguf_format("Q4_K")``): block size and bytes per block come from the
``gguf`` library's table, the expansion from diffusers' torch dequantizers (the ones its GGUF loader uses; they
equal the ``gguf`` library's numpy reference exactly, tests/unit/quant/test_gguf.py). The blocks stay uint8
buffers, so the block streamer copies them compressed and the GPU expands one weight at a time.

``GgufBlocks`` is the weight format of a family of GGML types (registered in optim/quant/format_registry.py):
another family is a subclass naming its types, in a file of its own.
"""

from __future__ import annotations

from functools import cache
from typing import ClassVar

import torch

from ..files.file_tensors import FileTensor, placeholder
from ..files.gguf_file import GgufTensor
from ..files.weight_source import WeightSource
from .compressed_linear import CompressedLinear
from .weight_format import WeightFormat


class GgufLinear(CompressedLinear):
    """``y = x @ dequantize(blocks).T + bias`` with the weight kept as GGML blocks of one type."""

    type_name: str  # the GGML type, e.g. "Q4_K" (set on each type's class)
    block_size: int  # weights per block
    type_size: int  # bytes per block
    # The expansion's temporaries per weight (diffusers' K-quant dequantizers go through int32 and float32
    # intermediates, then the expanded copy): not yet fitted on a GPU run.
    workspace_per_weight = 16
    # Set by the loader where torch.compile runs (CUDA): the dozen elementwise passes of a K-quant expansion
    # become one or two kernels.
    compiled_expansion = False

    def __init__(self, blocks: torch.Tensor, out_features: int, in_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        expected = self.buffer_specs(out_features, in_features, torch.bfloat16)["weight_gguf"][0]
        if tuple(blocks.shape) != expected or blocks.dtype != torch.uint8:
            raise ValueError(f"{self.type_name} blocks of a {out_features}x{in_features} weight are {expected} uint8")
        self.out_features, self.in_features = out_features, in_features
        self.register_buffer("weight_gguf", blocks)
        self._keep_bias(bias)

    @classmethod
    def buffer_specs(cls, out_features: int, in_features: int, dense: torch.dtype):
        if in_features % cls.block_size:
            raise ValueError(f"{cls.type_name} needs rows of a multiple of {cls.block_size} weights, not {in_features}")
        return {"weight_gguf": ((out_features, in_features // cls.block_size * cls.type_size), torch.uint8)}

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        expanded = _expand(self.type_name, self.weight_gguf, dtype, self.compiled_expansion)
        return expanded.reshape(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gguf {self.type_name}"


@cache
def gguf_format(type_name: str) -> type[GgufLinear]:
    """The layer class of one GGML type (one class per type, so plans name and size each exactly)."""
    from diffusers.quantizers.gguf.utils import dequantize_functions
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if type_name not in GGMLQuantizationType.__members__ or GGMLQuantizationType[type_name] not in dequantize_functions:
        raise ValueError(f"{type_name} is not a quantized GGUF type diffusers can expand")

    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return type(
        f"Gguf{type_name}Linear",
        (GgufLinear,),
        {
            "format_name": f"gguf {type_name}",
            "type_name": type_name,
            "block_size": block_size,
            "type_size": type_size,
            "host_bytes_per_weight": type_size / block_size,
            "__module__": __name__,
        },
    )


def _expander(type_name: str):
    from diffusers.quantizers.gguf.utils import dequantize_functions
    from gguf import GGMLQuantizationType

    return dequantize_functions[GGMLQuantizationType[type_name]]


@cache
def _compiled_expander(type_name: str):
    # dynamic: one graph for every weight shape of the model (the block count is the only size that varies).
    return torch.compile(_expander(type_name), dynamic=True)


def _expand(type_name: str, blocks: torch.Tensor, dtype: torch.dtype, compiled: bool = False) -> torch.Tensor:
    """The weights of ``blocks`` (uint8, any shape) of one GGML type, flat, in ``dtype``."""
    cls = gguf_format(type_name)
    expand = _compiled_expander(type_name) if compiled else _expander(type_name)
    return expand(blocks.reshape(-1, cls.type_size), cls.block_size, cls.type_size, dtype=dtype).reshape(-1)


def compile_expansions(module: torch.nn.Module, compiled: bool = True) -> int:
    """Expand every GGUF layer of ``module`` with (or without) the compiled expansion; how many there are."""
    layers = [m for m in module.modules() if isinstance(m, GgufLinear)]
    for layer in layers:
        layer.compiled_expansion = compiled
    return len(layers)


def dequantize_blocks(tensor: GgufTensor, blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The values of a quantized GGUF tensor that is no Linear weight (an embedding table), in ``dtype``."""
    return _expand(tensor.type_name, blocks, dtype).reshape(tensor.shape)


def gguf_linear(tensor: GgufTensor, blocks: torch.Tensor, bias: torch.Tensor | None) -> GgufLinear:
    """The layer for a quantized GGUF weight whose raw ``blocks`` were read from the file."""
    out_features, in_features = tensor.shape
    return gguf_format(tensor.type_name)(blocks, out_features, in_features, bias)


class GgufBlocks(WeightFormat):
    """GGML quantized blocks in GGUF files (ComfyUI-GGUF's), of the types in ``type_names``: the legacy
    32-weight types and the K-quants (Q4_K_M mixes Q4_K and Q6_K, Q5_K_S is Q5_K, ...)."""

    name = "GGUF blocks"
    # By the name llama.cpp gives them (gguf.GGMLQuantizationType's).
    type_names: ClassVar[tuple[str, ...]] = (
        "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K",
    )  # fmt: skip

    def stored(self, source: WeightSource, key: str) -> GgufTensor | None:
        tensor = source.gguf_blocks(key)
        return tensor if tensor is not None and tensor.type_name in self.type_names else None

    def holds(self, source, file_key, info):
        return isinstance(info, GgufTensor) and info.quantized and info.type_name in self.type_names

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
            for layer in module.modules():
                if isinstance(layer, GgufLinear) and layer.type_name in self.type_names:
                    layer.compiled_expansion = True
