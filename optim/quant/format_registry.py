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

from ..errors import QwenFitError
from ..files.gguf_file import PLAIN_TYPES, GgufTensor
from ..files.weight_source import WeightSource
from ..settings import COMPRESSED_PRECISIONS
from .comfy_quant_formats import ComfyQuantLayers
from .fp8_matmul import Fp8MatmulOnLoad
from .fp8_storage import Fp8Storage
from .gguf import GgufBlocks
from .gguf_iq4 import GgufIq4Blocks
from .int8 import Int8OnLoad
from .nf4 import Nf4OnLoad
from .weight_format import QuantizedOnLoad, WeightFormat

WEIGHT_FORMATS: tuple[WeightFormat, ...] = (
    Fp8Storage(),
    Fp8MatmulOnLoad(),
    Int8OnLoad(),
    Nf4OnLoad(),
    GgufBlocks(),
    GgufIq4Blocks(),
    ComfyQuantLayers(),
)

_BY_PRECISION = {f.precision: f for f in WEIGHT_FORMATS if f.precision is not None}
assert sorted(_BY_PRECISION) == sorted(COMPRESSED_PRECISIONS), "every compressed precision needs one format"
# The GGML block types some format reads (a GGUF file's other block types are refused, naming these).
GGUF_TYPES_READ: tuple[str, ...] = tuple(t for f in WEIGHT_FORMATS if isinstance(f, GgufBlocks) for t in f.type_names)


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
    if (blocks := source.gguf_blocks(key)) is not None:  # blocks of a type no format reads
        file, file_key = source.locate(key)
        raise _unread(file.path.name, file_key, blocks.type_name)
    return None


def kept_as_stored(source: WeightSource, file_key: str, info: Any) -> bool:
    """True for a tensor as the files name it (``info``: its header entry) that some format keeps as stored."""
    return any(fmt.holds(source, file_key, info) for fmt in WEIGHT_FORMATS)


def refuse_unread(source: WeightSource) -> None:
    """Refuse files that store a tensor in a form no format reads, naming the types that are read."""
    for file in source.files:
        for key, info in file.tensors.items():
            if isinstance(info, GgufTensor) and info.quantized and not kept_as_stored(source, key, info):
                raise _unread(file.path.name, key, info.type_name)


def _unread(file_name: str, key: str, type_name: str) -> QwenFitError:
    supported = ", ".join((*PLAIN_TYPES, *GGUF_TYPES_READ))
    return QwenFitError(
        f"{file_name} stores {key!r} as {type_name}, a GGUF type QwenFit does not read ({supported} are read). "
        "Use a file of one of those types (Q4_K_M, Q5_K_M, Q6_K, Q8_0 ...)."
    )


def prepare_layers(module: nn.Module, can_compile: bool) -> None:
    """Let every format prepare its layers of a loaded ``module`` before they run."""
    for fmt in WEIGHT_FORMATS:
        fmt.prepare(module, can_compile)
