"""Every weight format the pack reads or makes, each one class (optim/quant/weight_format.py), registered once.

Formats a precision choice asks for (fp8 as stored, and int8 / nf4 / fp8 matmul quantized on load) are found by
that choice; formats the files decide (GGML blocks, Comfy-Org's quantized layers) say themselves which weights
of a source are theirs. The loader's fill and assembly, the header-only sizes and the host plan ask here and
never name a format: adding one is a file in optim/quant/ and one line in ``WEIGHT_FORMATS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..files.weight_source import WeightSource
from ..settings import COMPRESSED_PRECISIONS
from .comfy_quant_formats import ComfyQuantLayers
from .fp8_matmul import Fp8MatmulOnLoad
from .fp8_storage import Fp8Storage
from .gguf import GgufBlocks
from .int8 import Int8OnLoad
from .nf4 import Nf4OnLoad
from .weight_format import QuantizedOnLoad, WeightFormat

WEIGHT_FORMATS: tuple[WeightFormat, ...] = (
    Fp8Storage(),
    Fp8MatmulOnLoad(),
    Int8OnLoad(),
    Nf4OnLoad(),
    GgufBlocks(),
    ComfyQuantLayers(),
)

_BY_PRECISION = {f.precision: f for f in WEIGHT_FORMATS if f.precision is not None}
assert sorted(_BY_PRECISION) == sorted(COMPRESSED_PRECISIONS), "every compressed precision needs one format"


def format_for(choice: str) -> WeightFormat | None:
    """The format a precision choice asks for (None: a dense dtype, or auto)."""
    return _BY_PRECISION.get(choice)


def quantized_on_load(choice: str) -> QuantizedOnLoad | None:
    """The format a precision choice quantizes Linears into after loading (None: nothing is quantized on load)."""
    found = _BY_PRECISION.get(choice)
    return found if isinstance(found, QuantizedOnLoad) else None


def quantize_linears(root: nn.Module, choice: str, keep: Callable[[str], bool]) -> int:
    """Quantize the Linears under ``root`` that ``keep`` accepts into ``choice``'s format; how many."""
    return _on_load(choice).quantize(root, keep)


def size_as_quantized(root: nn.Module, choice: str, keep: Callable[[str], bool]) -> None:
    """What ``quantize_linears`` would make of ``root``, as meta layers (sizes from the headers)."""
    _on_load(choice).size_as_quantized(root, keep)


def _on_load(choice: str) -> QuantizedOnLoad:
    found = quantized_on_load(choice)
    if found is None:
        raise ValueError(f"{choice!r} is no format quantized on load")
    return found


def stored_format(source: WeightSource, key: str) -> tuple[WeightFormat, Any] | None:
    """The format that keeps tensor ``key`` as stored whatever the plan, and what the files hold for it (None:
    none; the plan decides)."""
    for fmt in WEIGHT_FORMATS:
        if (stored := fmt.stored(source, key)) is not None:
            return fmt, stored
    return None


def kept_as_stored(source: WeightSource, file_key: str, info: Any) -> bool:
    """True for a tensor as the files name it (``info``: its header entry) that some format keeps as stored."""
    return any(fmt.holds(source, file_key, info) for fmt in WEIGHT_FORMATS)


def prepare_layers(module: nn.Module, can_compile: bool) -> None:
    """Let every format prepare its layers of a loaded ``module`` before they run."""
    for fmt in WEIGHT_FORMATS:
        fmt.prepare(module, can_compile)
