"""What a weight format is to the rest of the pack: one class per format, registered once in
optim/quant/format_registry.py.

A format says which weights of a source are its (``stored``, ``holds``), sizes their layers from the headers
(``empty``, ``host_bytes_per_weight``), builds and fills a layer from the files (``layer``), and, for formats
quantized on load, turns dense Linears into its layers (``QuantizedOnLoad``). The layer classes themselves
(``CompressedLinear`` subclasses) own their buffers, expansion and matmul.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ..files.file_tensors import FileTensor
from ..files.weight_source import WeightSource
from .compressed_linear import CompressedLinear, replace_module
from .fp8 import Fp8Linear

# A Linear's bias, read now or (with a recipes dict) left in the files: the loader's rule for every layer.
BiasReader = Callable[[dict[str, FileTensor] | None], torch.Tensor | None]


class WeightFormat:
    """One weight format: the defaults describe a format the files never decide (quantized on load)."""

    name: ClassVar[str]  # how the registry, tests and errors name the format
    # The precision choice that asks for this format (settings.py), or None where the files decide.
    precision: ClassVar[str | None] = None
    # The layer class, for formats with one (a family of formats has one per stored type).
    layer_class: ClassVar[type[CompressedLinear] | None] = None
    # Host temporaries per weight while ``layer`` builds a layer read now (the loader trims the heap after
    # every few MiB of them).
    load_temporary_bytes_per_weight: ClassVar[int] = 0

    @property
    def host_bytes_per_weight(self) -> float:
        """Planned host bytes per weight of a Linear in this format, scales included."""
        assert self.layer_class is not None, f"{self.name} is sized from the headers, per tensor"
        return self.layer_class.host_bytes_per_weight

    def stored(self, source: WeightSource, key: str) -> Any | None:
        """What the files hold for tensor ``key`` (as the module names it) kept in this format whatever the plan
        (None: not this format's)."""
        return None

    def holds(self, source: WeightSource, file_key: str, info: Any) -> bool:
        """True for a tensor as the files name it (``info``: its header entry) kept as stored in this format."""
        return False

    def empty(self, stored: Any, out_features: int, in_features: int, bias: nn.Parameter | None, dtype) -> nn.Module:
        """The layer on the meta device, sized exactly from the headers."""
        assert self.layer_class is not None
        return self.layer_class.empty(out_features, in_features, bias, dtype)

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
        """The layer holding the file's tensors (read now), or placeholders and their recipes by state-dict key."""
        raise NotImplementedError(f"{self.name} layers are not read from files")

    def expand(self, stored: Any, source: WeightSource, key: str, dtype: torch.dtype) -> torch.Tensor:
        """A non-Linear tensor of this format (an embedding table), expanded to ``dtype`` now."""
        raise NotImplementedError(f"{self.name} keeps no tensor but Linear weights")

    def prepare(self, module: nn.Module, can_compile: bool) -> None:
        """After loading: anything this format's layers need before they run."""


class QuantizedOnLoad(WeightFormat):
    """A format the pack quantizes dense Linears into after loading (never read from files)."""

    layer_class: ClassVar[type[CompressedLinear]]

    def quantize(self, root: nn.Module, keep: Callable[[str], bool]) -> int:
        """Replace every Linear (or fp8 Linear) under ``root`` whose name ``keep`` accepts by this format's layer,
        one layer at a time (only one dense weight is ever expanded). Returns how many were replaced."""
        names = _quantizable(root, keep)
        for name in names:
            layer = root.get_submodule(name)
            dense = layer.dequantized_weight(_dense_dtype(layer)) if isinstance(layer, Fp8Linear) else layer.weight.data
            bias = None if layer.bias is None else layer.bias.data
            replace_module(root, name, self.layer_class(dense, bias))
        return len(names)

    def size_as_quantized(self, root: nn.Module, keep: Callable[[str], bool]) -> None:
        """What ``quantize`` would make of ``root``, with meta buffers of the same shapes and dtypes (for sizes
        from the files' headers)."""
        for name in _quantizable(root, keep):
            layer = root.get_submodule(name)
            new = self.layer_class.empty(layer.out_features, layer.in_features, layer.bias, _dense_dtype(layer))
            replace_module(root, name, new)


def _quantizable(root: nn.Module, keep: Callable[[str], bool]) -> list[str]:
    # Dense Linears, and fp8 ones (an fp8 file planned for int8/nf4 is expanded one layer at a time).
    return [n for n, m in root.named_modules() if isinstance(m, nn.Linear | Fp8Linear) and keep(n)]


def _dense_dtype(layer: nn.Module) -> torch.dtype:
    if isinstance(layer, Fp8Linear):  # its bias says what the layer computes in
        return layer.bias.dtype if layer.bias is not None else torch.bfloat16
    return layer.weight.dtype
