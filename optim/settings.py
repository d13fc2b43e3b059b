"""Immutable descriptions of the user's choices (precision, offload, VAE).

Settings are values, not mutations: the settings nodes return these, the loader and the
run functions turn them into a plan. They are frozen and hashable, so they can key caches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import QwenFitError

# "auto" lets the planner decide: bf16 on a GPU, fp32 on a CPU (bf16 matmuls are slow there).
# fp8_e4m3fn stores Linear weights in fp8 with a per-tensor scale and computes in the auto dtype.
FP8 = "fp8_e4m3fn"
# Weight-only integer formats: int8 per row, nf4 in blocks of 64 (optim/quantized_linear.py).
INT8, NF4 = "int8", "nf4"
# fp8 weights multiplied in fp8 (activations quantized per token): GPUs with compute capability >= 8.9.
FP8_FAST = "fp8_e4m3fn_fast"
PRECISIONS = ("auto", "bf16", "fp16", "fp32", FP8, FP8_FAST, INT8, NF4)
OFFLOAD_MODES = ("auto", "none", "model", "blocks")
# How prompt and negative prompt share a pass over the weights (optim/streaming/transformer_engine.py).
CFG_MODES = ("batched", "interleaved", "two_calls")
# Several GPUs (optim/gpus.py, optim/multi_gpu_planner.py).
GPU_CHOICES = ("one", "all")
MULTI_GPU_STRATEGIES = ("auto", "cfg_parallel", "split")
SWITCHES = ("auto", "on", "off")


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise QwenFitError(f"{field}={value!r} is not supported; pick one of {', '.join(allowed)}.")


@dataclass(frozen=True)
class PrecisionSettings:
    """Compute/storage dtype per component."""

    transformer: str = "auto"
    text_encoder: str = "auto"
    vae: str = "auto"

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_choice(f"precision of {f.name}", getattr(self, f.name), PRECISIONS)
        if self.vae in (FP8, FP8_FAST, INT8, NF4):
            raise QwenFitError(
                f"the VAE cannot be stored in {self.vae} (it is only 0.25 GB and its convolutions are not "
                "Linear layers); pick auto, bf16 or fp32 for the VAE."
            )

    @property
    def transformer_fp8(self) -> bool:
        return self.transformer == FP8

    @property
    def text_encoder_fp8(self) -> bool:
        return self.text_encoder == FP8


@dataclass(frozen=True)
class OffloadSettings:
    """Where weights live between uses.

    ``none`` keeps everything on the GPU, ``model`` moves whole components on and off
    the GPU (diffusers' own lever), ``blocks`` streams every transformer block from host
    memory; ``auto`` lets the planner fit the ``vram_budget`` (a card size, "auto" for the
    memory free at load time, or "unlimited"). ``host_budget`` bounds the host RAM the weights
    keep between runs (optim/host_plan.py): "auto" is three quarters of the machine's RAM.
    ``cfg``: "batched" (fastest), "interleaved" (bit-identical to two calls) or "two_calls".
    ``gpus``: "one" (ComfyUI's device) or "all" (every visible GPU, each within ``vram_budget``);
    ``multi_gpu``: how several GPUs share the work ("auto", "cfg_parallel", "split").
    """

    mode: str = "auto"
    vram_budget: str = "auto"
    host_budget: str = "auto"
    cfg: str = "batched"
    gpus: str = "one"
    multi_gpu: str = "auto"

    def __post_init__(self) -> None:
        from .budget import VRAM_BUDGETS
        from .host_plan import HOST_BUDGETS

        _check_choice("offload mode", self.mode, OFFLOAD_MODES)
        _check_choice("VRAM budget", self.vram_budget, VRAM_BUDGETS)
        _check_choice("host RAM budget", self.host_budget, HOST_BUDGETS)
        _check_choice("CFG pass", self.cfg, CFG_MODES)
        _check_choice("GPUs", self.gpus, GPU_CHOICES)
        _check_choice("multi-GPU strategy", self.multi_gpu, MULTI_GPU_STRATEGIES)


@dataclass(frozen=True)
class VaeSettings:
    """VAE tiling (bounded decode memory for large images) and slicing (one image at a time)."""

    tiling: str = "auto"
    slicing: str = "auto"

    def __post_init__(self) -> None:
        _check_choice("VAE tiling", self.tiling, SWITCHES)
        _check_choice("VAE slicing", self.slicing, SWITCHES)
