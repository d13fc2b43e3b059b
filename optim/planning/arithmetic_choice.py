"""The speed rung a load request gets for its files on its GPUs.

GGUF files and Comfy-Org's quantized files keep their weights as stored (and refuse settings that would
store them otherwise); any other file gets the speed ladder's choice (``speed_ladder.py``) for the form its
blocks are stored in. Fixed at load (it decides how the blocks are stored); the plan preview asks the
same question for each rung.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import QwenFitError
from ..files.fp8_layouts import Fp8Layout
from ..files.sources import SourceDescription
from ..quant import fused_quantize
from ..quant.dtypes import dtype_name
from ..quant.fp8_scope import FP8_AS_STORED
from ..settings import FP8, INT8
from .load_request import LoadRequest, compute_dtypes, fp8_modes
from .planner import Gpu
from .speed_ladder import Arithmetic, choose_arithmetic


def arithmetic_for(request: LoadRequest, desc: SourceDescription, gpus: tuple[Gpu, ...]) -> Arithmetic:
    """The speed rung of the transformer's arithmetic for these files on these GPUs (fixed at load: it
    decides how the blocks are stored)."""
    storage = request.precision.transformer
    if desc.transformer.holds_gguf():
        _check_gguf_request(request, desc)
        return GGUF_EXACT if desc.transformer.holds_gguf_blocks() else GGUF_FLOAT
    if desc.transformer.holds_comfy_quant():
        return _comfy_quant_arithmetic(request, desc, gpus)
    as_stored = storage in ("auto", FP8) and fp8_modes(request, desc)["transformer"] == FP8_AS_STORED
    if storage == "auto":
        storage = FP8 if as_stored else dtype_name(compute_dtypes(request)["transformer"])
    # ComfyUI 0.8.0 multiplies fp8 weights in fp8 where the file says how (its scaled and mixed layouts).
    comfy_8bit = as_stored and desc.transformer.layout() in (Fp8Layout.SCALED, Fp8Layout.MIXED)
    return _choose(request.precision.speed, storage, gpus, comfy_8bit)


def _choose(speed: str, storage: str, gpus: tuple[Gpu, ...], comfy_8bit: bool) -> Arithmetic:
    capabilities = [g.capability for g in gpus]
    # Triton matters only where auto could pick an 8-bit product (importing it takes a second).
    triton = speed == "auto" and any(c is not None for c in capabilities) and fused_quantize.available()
    return choose_arithmetic(speed, storage, capabilities, comfy_multiplies_8bit=comfy_8bit, triton=triton)


GGUF_EXACT = Arithmetic("exact", "expanded", None, False, "GGUF blocks expanded one weight at a time where used")
GGUF_FLOAT = Arithmetic("exact", "expanded", None, False, "GGUF float weights (F16/BF16), computed as stored")


def _check_gguf_request(request: LoadRequest, desc: SourceDescription) -> None:
    """GGUF blocks compute as stored, expanded where used: no other storage, no 8-bit products (yet)."""
    name = desc.transformer.names
    if request.precision.transformer != "auto":
        raise QwenFitError(
            f"{name} is a GGUF file: its weights stay in their GGUF types. Set the transformer precision to auto "
            f"(it is {request.precision.transformer}), or load a safetensors release to store them otherwise."
        )
    if request.precision.speed in ("fast", "fastest"):
        raise QwenFitError(
            f"speed {request.precision.speed} needs fp8 or int8 weights; {name} is a GGUF file, which computes "
            "exactly as stored. Pick speed exact (or auto), or load the fp8 safetensors release for the fast rungs."
        )


def _comfy_quant_arithmetic(request: LoadRequest, desc: SourceDescription, gpus: tuple[Gpu, ...]) -> Arithmetic:
    """Comfy-Org's int8 / mxfp8 / nvfp4 layers stay as stored (optim/quant/comfy_int8.py, mxfp8.py, nvfp4.py):
    exact expands them where used; int8 files (with or without ConvRot) also take the fast rungs, multiplying
    the stored int8 weights as ComfyUI does (nothing re-quantized, so exact, fast and fastest switch in place)."""
    name, formats = desc.transformer.names, desc.transformer.comfy_quant_formats()
    if request.precision.transformer != "auto":
        raise QwenFitError(
            f"{name} stores its weights quantized ({', '.join(formats)}): they stay so. Set the transformer "
            f"precision to auto (it is {request.precision.transformer}), or load the bf16 release to store them "
            "otherwise."
        )
    blackwell = [f for f in formats if f in ("mxfp8", "nvfp4")]
    speed = request.precision.speed
    if speed in ("fast", "fastest") and blackwell:
        raise QwenFitError(
            f"speed {speed} is not offered for {name} ({', '.join(formats)}): native {'/'.join(blackwell)} "
            "products need Blackwell tensor cores (compute capability 10), which QwenFit does not use, so its "
            "weights are expanded where used and compute exactly as stored. Pick speed exact (or auto), or load "
            "the int8 (ConvRot) or fp8 release for the fast rungs."
        )
    auto = ""
    if speed in ("fast", "fastest", "auto") and not blackwell:  # int8: ComfyUI's W8A8 product on the stored weights
        rung = _choose(speed, INT8, gpus, comfy_8bit=True)
        if rung.kind != "expanded":
            # MEASURED's int8 figures are the pack's own int8 rung's; ComfyUI's product was not benchmarked yet.
            return replace(rung, reason=f"Comfy-Org {', '.join(formats)} file: {rung.reason}", benchmarked=False)
        auto = f" ({rung.reason})"
    native = (
        f"; native {'/'.join(blackwell)} products need Blackwell tensor cores (compute capability 10), not used"
        if blackwell
        else "; speed fast multiplies them in int8"
    )
    why = f"Comfy-Org {', '.join(formats)} weights expanded to the compute dtype one weight at a time where used"
    return Arithmetic("exact", "expanded", None, False, why + native + auto)
