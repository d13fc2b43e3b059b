"""Which Linear layers are stored in fp8: one rule for the loader and for the header-only preview.

A component's Linear weights are stored dense, fp8 as the file stores them (layers the file left
dense stay dense, as in ComfyUI), or fp8 for every block Linear (quantized on load).
"""

from __future__ import annotations

from collections.abc import Callable

from ..files.weight_source import WeightSource
from ..qwen.anatomy import is_language_block_linear, is_transformer_block_key
from ..settings import FP8

FP8_NONE, FP8_AS_STORED, FP8_ALL = "none", "as_stored", "all"
# Per component: the Linears fp8 may apply to (the transformer's blocks; the language model's layers,
# never the vision tower or lm_head).
FP8_SCOPES: dict[str, Callable[[str], bool]] = {
    "transformer": is_transformer_block_key,
    "text_encoder": is_language_block_linear,
}


def fp8_mode(choice: str, source: WeightSource) -> str:
    """fp8 storage for a component: asked for explicitly, or "auto" on an fp8 file (expanding it would
    double its memory for no gain in fidelity; layers the file keeps dense stay dense)."""
    if choice == FP8:
        return FP8_ALL
    if choice == "auto" and source.holds_fp8():
        return FP8_AS_STORED
    return FP8_NONE


def fp8_filter(mode: str, component: str, source: WeightSource) -> Callable[[str], bool] | None:
    """The predicate on Linear names the loader stores in fp8, or None for none."""
    scope = FP8_SCOPES[component]
    if mode == FP8_NONE:
        return None
    if mode == FP8_AS_STORED:
        return lambda name: scope(name) and source.has(f"{name}.weight") and source.is_fp8(f"{name}.weight")
    return scope
