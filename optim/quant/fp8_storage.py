"""The fp8 precision as a weight format: Linears kept in fp8 (``Fp8Linear``), read as the file stores them.

Which Linears are fp8 is the plan's choice (optim/quant/fp8_scope.py), not the file's: an fp8 file loaded in
bf16 is expanded, and a bf16 file planned for fp8 is quantized here, one tensor at a time, as it is read.
"""

from __future__ import annotations

import torch

from ..files.file_tensors import FileTensor, placeholder
from ..files.fp8_layouts import Fp8Layout, Fp8Weight, quantize_absmax
from ..files.weight_source import WeightSource
from ..settings import FP8
from .fp8 import Fp8Linear
from .weight_format import BiasReader, WeightFormat


class Fp8Storage(WeightFormat):
    """fp8 weights with a per-tensor scale (plain, scaled or mixed files), or bf16/fp32 ones quantized so."""

    name = "fp8 (as stored)"
    precision = FP8
    layer_class = Fp8Linear
    load_temporary_bytes_per_weight = 4  # a dense file's weight goes through float32 to be quantized

    def layer(self, stored, source, layer, shape, bias, dtype, device, in_files):
        weight_key = f"{layer}.weight"
        if in_files and source.is_fp8(weight_key):
            return _left_in_files(source, layer, bias)
        if source.is_fp8(weight_key):
            weight = source.read_fp8(weight_key)
        else:  # a bf16/fp32 file planned for fp8 storage: quantize this one tensor now
            data, scale = quantize_absmax(source.read(weight_key))
            weight = Fp8Weight(data=data, scale=scale, layout=Fp8Layout.SCALED)
        weight = Fp8Weight(weight.data.to(device), weight.scale.to(device), weight.layout)
        return Fp8Linear(weight, bias(None)), {}


def _left_in_files(source: WeightSource, layer: str, bias: BiasReader) -> tuple[Fp8Linear, dict[str, FileTensor]]:
    """An Fp8Linear whose data, scale and bias stay in the files; its recipes by state-dict key."""
    weight_key = f"{layer}.weight"
    file, file_key = source.locate(weight_key)
    scale = source.locate_scale(weight_key)
    stored = file.tensors[file_key].dtype
    data_dtype = torch.float8_e4m3fn if stored == torch.uint8 else stored  # mixed files store uint8
    empty = Fp8Weight(
        data=placeholder(file.shape(file_key), data_dtype),
        scale=placeholder((), torch.float32),
        layout=source.layout_of_key(weight_key) if scale is not None else Fp8Layout.PLAIN,
    )
    recipes = {
        f"{layer}.weight_fp8": FileTensor(file, file_key),
        f"{layer}.weight_scale": FileTensor(*scale) if scale is not None else FileTensor(None, "", constant=1.0),
    }
    return Fp8Linear(empty, bias(recipes)), recipes
