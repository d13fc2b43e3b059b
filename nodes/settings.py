"""Settings nodes: each returns an immutable description; nothing is loaded or changed here."""

from __future__ import annotations

from comfy_api.latest import io

from ..optim.settings import OFFLOAD_MODES, PRECISIONS, SWITCHES, OffloadSettings, PrecisionSettings, VaeSettings
from .types import CATEGORY, OffloadConfig, PrecisionConfig, VaeConfig

_PRECISION_TIP = (
    "auto: bf16 on a GPU, fp32 on a CPU. fp16 is offered but this model overflows in fp16 "
    "(NaN/black images): use it only to test."
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
                    tooltip="auto: keep everything on the GPU when it fits, else stream blocks. none: all on "
                    "the GPU. model: move whole components in and out. blocks: stream transformer "
                    "and text-encoder blocks from host memory.",
                ),
            ],
            outputs=[OffloadConfig.Output("offload", display_name="offload")],
        )

    @classmethod
    def execute(cls, mode: str) -> io.NodeOutput:
        return io.NodeOutput(OffloadSettings(mode=mode))


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
