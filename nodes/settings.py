"""Settings nodes: each returns an immutable description; nothing is loaded or changed here."""

from __future__ import annotations

from comfy_api.latest import io

from ..optim.budget import VRAM_BUDGETS
from ..optim.host_plan import HOST_BUDGETS
from ..optim.settings import (
    CFG_MODES,
    GPU_CHOICES,
    MULTI_GPU_STRATEGIES,
    OFFLOAD_MODES,
    PRECISIONS,
    SWITCHES,
    OffloadSettings,
    PrecisionSettings,
    VaeSettings,
)
from .types import CATEGORY, OffloadConfig, PrecisionConfig, VaeConfig

_PRECISION_TIP = (
    "auto: as the file stores it (an fp8 file stays fp8), computing in bf16 on a GPU, fp32 on a CPU. "
    "fp8_e4m3fn: fp8 storage, bf16 compute, any GPU. fp8_e4m3fn_fast: fp8 matmuls (RTX 40xx/50xx, "
    "H100/H200 and newer). int8 / nf4: weight-only 8-bit / 4-bit storage (smaller, slower to expand). "
    "fp16 is offered but this model overflows in fp16 (NaN/black images): use it only to test."
)


class PrecisionSelector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitPrecisionSelector",
            display_name="QwenFit Precision",
            category=CATEGORY,
            description="Choose the dtype of each Qwen-Image component. Connect to QwenFit Optimized Loader.",
            inputs=[
                io.Combo.Input("transformer", options=list(PRECISIONS), default="auto", tooltip=_PRECISION_TIP),
                io.Combo.Input("text_encoder", options=list(PRECISIONS), default="auto", tooltip=_PRECISION_TIP),
                io.Combo.Input("vae", options=list(PRECISIONS), default="auto", tooltip=_PRECISION_TIP),
            ],
            outputs=[PrecisionConfig.Output("precision", display_name="precision")],
        )

    @classmethod
    def execute(cls, transformer: str, text_encoder: str, vae: str) -> io.NodeOutput:
        return io.NodeOutput(PrecisionSettings(transformer=transformer, text_encoder=text_encoder, vae=vae))


class OffloadToggle(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitOffloadToggle",
            display_name="QwenFit Offload",
            category=CATEGORY,
            description="Where weights wait between uses. Connect to QwenFit Optimized Loader.",
            inputs=[
                io.Combo.Input(
                    "mode",
                    options=list(OFFLOAD_MODES),
                    default="auto",
                    tooltip="auto: the planner fits the VRAM budget, keeping as many transformer blocks on the "
                    "GPU as fit and streaming the rest from pinned host memory. none: everything on the GPU. "
                    "model: diffusers' whole-component offload (slow). blocks: stream every transformer block.",
                ),
                io.Combo.Input(
                    "vram_budget",
                    options=list(VRAM_BUDGETS),
                    default="auto",
                    tooltip="The card the plan must fit: auto uses the memory free when the model loads; a card "
                    "size keeps the whole generation (text encoding, denoising, VAE) within what PyTorch can use "
                    "on such a card (8 GB -> 7.0 GiB); unlimited keeps everything resident.",
                ),
                io.Combo.Input(
                    "host_budget",
                    options=list(HOST_BUDGETS),
                    default="auto",
                    tooltip="Host RAM the weights may keep between runs. When short, the text encoder (used once "
                    "per new prompt) and the modulation layers (once per new step count) stay in the model files "
                    "and are read at each use: same images, a few seconds more for a new prompt. auto: three "
                    "quarters of this machine's RAM; minimal: read them from the files always.",
                    optional=True,
                ),
                io.Combo.Input(
                    "cfg",
                    options=list(CFG_MODES),
                    default="batched",
                    tooltip="How prompt and negative prompt share each pass over the weights. batched: one "
                    "matmul for both, fastest; may differ from the reference by bf16 rounding. interleaved: the "
                    "same numbers as diffusers' two calls, about 1% slower (10-15% with fp8/int8/nf4 weights). "
                    "two_calls: as diffusers (streamed weights cross twice).",
                    optional=True,
                ),
                io.Combo.Input(
                    "gpus",
                    options=list(GPU_CHOICES),
                    default="one",
                    tooltip="one: the GPU ComfyUI runs on. all: that GPU first, then every other visible GPU, "
                    "each within the VRAM budget. With fewer GPUs the plan says what it fell back to.",
                    optional=True,
                ),
                io.Combo.Input(
                    "multi_gpu",
                    options=list(MULTI_GPU_STRATEGIES),
                    default="auto",
                    tooltip="How several GPUs share the work. cfg_parallel: every block on two GPUs, prompt and "
                    "negative prompt computed at the same time (about half the time per step; needs the whole "
                    "transformer on each). split: the blocks spread over the GPUs, so big models run without "
                    "streaming. auto: the planner picks the faster one that fits.",
                    optional=True,
                ),
            ],
            outputs=[OffloadConfig.Output("offload", display_name="offload")],
        )

    @classmethod
    def execute(
        cls,
        mode: str,
        vram_budget: str = "auto",
        host_budget: str = "auto",
        cfg: str = "batched",
        gpus: str = "one",
        multi_gpu: str = "auto",
    ) -> io.NodeOutput:
        return io.NodeOutput(
            OffloadSettings(
                mode=mode, vram_budget=vram_budget, host_budget=host_budget, cfg=cfg, gpus=gpus, multi_gpu=multi_gpu
            )
        )


class VAESlicer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitVAESlicer",
            display_name="QwenFit VAE Tiling/Slicing",
            category=CATEGORY,
            description="Bound the VAE's memory. Connect to QwenFit Optimized Loader; changing it never reloads.",
            inputs=[
                io.Combo.Input(
                    "tiling",
                    options=list(SWITCHES),
                    default="auto",
                    tooltip="Decode in tiles: far less VRAM for large images, a little slower. "
                    "auto: on when weights are offloaded.",
                ),
                io.Combo.Input(
                    "slicing",
                    options=list(SWITCHES),
                    default="auto",
                    tooltip="Decode one image (or layer) at a time. auto: on for Layered.",
                ),
            ],
            outputs=[VaeConfig.Output("vae_settings", display_name="vae_settings")],
        )

    @classmethod
    def execute(cls, tiling: str, slicing: str) -> io.NodeOutput:
        return io.NodeOutput(VaeSettings(tiling=tiling, slicing=slicing))
