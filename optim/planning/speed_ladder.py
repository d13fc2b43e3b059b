"""The speed ladder: which arithmetic the transformer blocks multiply in, chosen per GPU.

- ``exact``: weights expanded to the compute dtype (bf16 on a GPU), bit-identical to the reference.
- ``fast``: W8A8, the weights' own 8-bit form times activations quantized per token: fp8 on GPUs with
  fp8 tensor cores (compute capability 8.9+), int8 on GPUs with int8 tensor cores (7.5+).
- ``fastest``: fast plus the step cache (optim/execution/step_cache.py).
- ``auto``: fast where ComfyUI's own nodes (0.8.0, with comfy-kitchen) multiply the same file in 8 bits by
  default, so its numerics are no worse than what the user would get from ComfyUI: fp8 files in ComfyUI's scaled
  or mixed layouts on GPUs with fp8 tensor cores, Comfy-Org int8 files where torch's int8 product beats bf16
  (before Hopper); and only with Triton installed, whose fused activation quantization makes the uncompiled
  products faster than exact (optim/quant/fused_quantize.py). Everything else is exact: bf16 and GGUF files,
  plain fp8 casts (ComfyUI computes those in bf16), weights quantized on load, the CPU.

Pure: GPUs are described by their compute capability (None: the CPU), so tests can ask about any card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import QwenFitError
from ..settings import FP8, FP8_FAST, INT8, NF4, SPEEDS

FP8_CAPABILITY, INT8_CAPABILITY = (8, 9), (7, 5)
# From Hopper on, torch's int8 product (``_int_mm``) ran slower than bf16 (H200, bench/results/fast_kernels_*).
INT8_SLOW_CAPABILITY = (9, 0)
FP8_GPUS = "RTX 40xx/50xx, RTX 6000 Ada, L4, L40, H100, H200, B200"
INT8_GPUS = "RTX 20xx and newer, T4, A10, A100 and the fp8 GPUs"
# What each stored form of the blocks multiplies in on the fast rung (None: it has no 8-bit product).
_NATIVE = {FP8: "fp8", FP8_FAST: "fp8", INT8: "int8", NF4: None}


@dataclass(frozen=True)
class Deviation:
    """Final-latent relative L2 deviations measured on the benchmark (6 steps, true CFG, H200)."""

    storage: float  # exact arithmetic on these weights against bf16 weights
    fast_vs_exact: float  # fast arithmetic against exact arithmetic on the same weights


# The H200 runs of 2026-11-30 on seeded random weights (bench/results/bench_edit_speed_h200_2026-11-30_final.md
# for fp8, bench_layered_speed_h200_2026-11-30.md for int8). Random weights make every deviation larger than a
# trained model's would be (docs/performance.md). The int8 run also computed the modulation table in 8 bits
# (since fixed): its fast_vs_exact is an upper side.
MEASURED: dict[str, Deviation] = {
    "fp8": Deviation(storage=3.94e-2, fast_vs_exact=5.53e-2),
    "int8": Deviation(storage=3.59e-2, fast_vs_exact=4.73e-2),
}
# What auto's fast rung is held against: the first image's relative L2 from the same harness's exact computation
# of the same Edit-2509 scaled fp8 file and seed, (QwenFit's uncompiled fp8 rung, ComfyUI 0.8.0's default fp8
# path against its fp8 compute turned off); H100, 2026-12-07, bench/results/2026-12-07_native08/native08.md.
AGAINST_COMFY: dict[str, tuple[float, float]] = {"fp8": (1.98e-2, 1.99e-2)}


@dataclass(frozen=True)
class Arithmetic:
    """The rung a run uses: what the blocks multiply in, what they must be stored as for it (None: as
    loaded), whether the step cache runs, and why."""

    rung: str  # "exact", "fast" or "fastest"
    kind: str  # "expanded" (weights expanded to the compute dtype), "fp8" or "int8"
    store_as: str | None
    step_cache: bool
    reason: str
    benchmarked: bool = True  # MEASURED holds this rung's deviation for these weights' format
    # torch.compile the blocks (where Triton is): asked-for fast rungs only; its ~15 s fall on the first image.
    # auto's fast rung runs uncompiled with the fused activation quantization, so no image waits for a compile.
    compiled: bool = False

    def describe(self) -> str:
        what = "weights expanded, exact" if self.kind == "expanded" else f"{self.kind} W8A8 (per-token activations)"
        cache = "; step cache on" if self.step_cache else ""
        compiled = "; blocks compiled on the first image" if self.compiled else ""
        return f"speed {self.rung}: {what}{cache}{compiled} ({self.reason}{measured_deviation(self)})"


# What each rung added to the final latents against exact on the same weights, measured on the benchmark
# (H200, 2026-11-30, random weights, 6 steps: Edit for fp8, Layered for int8). The run report prints it.
STEP_CACHE_DEVIATION = 5.1e-1  # fastest against exact, Edit 1024 (Layered 640: 7.4e-1)


def measured_deviation(arithmetic: Arithmetic) -> str:
    """The benchmark's deviation of this rung from exact, for the plan and the run report."""
    if arithmetic.kind == "expanded":
        return ""
    if not arithmetic.benchmarked:
        return "; its deviation from exact is not benchmarked on this file format yet"
    measured = MEASURED.get(arithmetic.kind)
    added = STEP_CACHE_DEVIATION if arithmetic.step_cache else measured.fast_vs_exact if measured else None
    if added is None:
        return ""
    return f"; benchmark: final latents {added:.1e} from exact (random weights, H200, bench/results)"


EXACT = Arithmetic("exact", "expanded", None, False, "bit-identical to the reference")


def _capability_text(capability: tuple[int, int] | None) -> str:
    return "the CPU" if capability is None else f"compute capability {capability[0]}.{capability[1]}"


def _best_for(capability: tuple[int, int] | None) -> str | None:
    """The fastest 8-bit product a device has (the CPU runs both, no faster: fp8 keeps fewer steps)."""
    if capability is None or capability >= FP8_CAPABILITY:
        return "fp8"
    return "int8" if capability >= INT8_CAPABILITY else None


def choose_arithmetic(
    speed: str,
    storage: str,
    capabilities: Sequence[tuple[int, int] | None],
    *,
    comfy_multiplies_8bit: bool = False,
    triton: bool = True,
) -> Arithmetic:
    """The rung for ``speed`` with the blocks stored as ``storage`` ("bf16"/"fp16"/"fp32", fp8_e4m3fn,
    fp8_e4m3fn_fast, int8, nf4) on devices of ``capabilities`` (every GPU of the plan; None: CPU).
    ``comfy_multiplies_8bit``: ComfyUI's own nodes multiply this file's weights in 8 bits by default (scaled and
    mixed fp8 layouts, Comfy-Org int8); ``triton``: Triton is installed. Both matter to ``auto`` only.
    Raises QwenFitError for a rung no GPU here can run, naming the GPUs that can."""
    if speed not in SPEEDS:
        raise QwenFitError(f"speed={speed!r} is not supported; pick one of {', '.join(SPEEDS)}.")
    gpus = [c for c in capabilities if c is not None]
    weakest = min(gpus) if gpus else None
    native = _NATIVE.get(storage, "dense")
    if storage == FP8_FAST and speed in ("auto", "exact"):  # quantized for fp8 matmuls: no exact form
        return Arithmetic("fast", "fp8", None, False, "fp8_e4m3fn_fast weights always multiply in fp8")
    if speed == "auto":
        return _auto(storage, native, weakest, comfy_multiplies_8bit, triton)
    if speed == "exact":
        return EXACT
    if native is None:
        raise QwenFitError(
            f"speed {speed} needs 8-bit weights; nf4 has no fast product. Pick precision int8 or fp8_e4m3fn (or auto)."
        )
    best = _best_for(weakest)
    if best is None:
        raise QwenFitError(
            f"speed {speed} needs int8 tensor cores (compute capability 7.5+: {INT8_GPUS}); this GPU has "
            f"{_capability_text(weakest)}. Pick speed exact."
        )
    cache = speed == "fastest"
    rung = "fastest" if cache else "fast"
    where = _capability_text(weakest)
    if native == "dense":
        store = FP8_FAST if best == "fp8" else INT8
        why = f"{storage} weights quantized per channel on load for {where}"
        return Arithmetic(rung, best, store, cache, why, compiled=True)
    if native == "fp8" and best != "fp8":
        why = f"{where} has no fp8 tensor cores ({FP8_GPUS}): fp8 weights requantized to int8"
        return Arithmetic(rung, "int8", INT8, cache, why, compiled=True)
    return Arithmetic(rung, native, None, cache, f"{native} weights as stored, {where}", compiled=True)


def _auto(
    storage: str, native: str | None, weakest: tuple[int, int] | None, comfy_8bit: bool, triton: bool
) -> Arithmetic:
    def exact(why: str) -> Arithmetic:
        return Arithmetic("exact", "expanded", None, False, f"auto: {why}")

    if native in (None, "dense"):
        return exact(f"{storage} weights, exact")
    if weakest is None:
        return exact("no GPU, so 8-bit products would not be faster")
    if _best_for(weakest) is None or (native == "fp8" and weakest < FP8_CAPABILITY):
        return exact(f"{_capability_text(weakest)} has no {native} tensor cores")
    ours = MEASURED[native].fast_vs_exact
    if not comfy_8bit:
        return exact(
            f"ComfyUI computes these {storage} weights in bf16 too; speed fast multiplies them in {native} "
            f"(benchmark: {ours:.1e} from exact)"
        )
    if native == "int8" and weakest >= INT8_SLOW_CAPABILITY:
        return exact(f"torch's int8 product is slower than bf16 on {_capability_text(weakest)} (measured on an H200)")
    if not triton:
        return exact(
            "Triton is not installed: 8-bit products without its fused quantization are slower than exact "
            "(install triton, or triton-windows on Windows, for speed fast)"
        )
    measured = AGAINST_COMFY.get(native)
    numerics = (
        f"first image {measured[0]:.1e} from exact, ComfyUI's own {measured[1]:.1e} (H100)"
        if measured
        else f"benchmark {ours:.1e} from exact; ComfyUI's own {native} path not measured yet"
    )
    return Arithmetic(
        "fast", native, None, False, f"auto: ComfyUI multiplies this file in {native} by default; {numerics}"
    )
