"""QwenFit LoRA: add a LoRA to a pipeline's stack (pipeline in, pipeline out, like ComfyUI's LoraLoader)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..optim import LoadedPipeline, lora_from_name, lora_names
from .comfy_glue import model_roots
from .types import CATEGORY, QwenPipeline


class QwenFitLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitLora",
            display_name="QwenFit LoRA",
            category=CATEGORY,
            description="Add a LoRA to the pipeline's stack. LoRAs apply as each layer runs, on any weight "
            "format (bf16, fp8, int8, nf4): adding, removing or re-weighting one never reloads the model. "
            "Chain several; at most one Lightning LoRA per stack.",
            inputs=[
                QwenPipeline.Input("pipeline", tooltip="From QwenFit Optimized Loader or another QwenFit LoRA."),
                io.Combo.Input(
                    "lora",
                    options=lora_names(model_roots),
                    tooltip="A LoRA from models/loras (kohya, diffusers/PEFT, ComfyUI or lightx2v keys). A Lightning "
                    "LoRA (4/8 steps) also switches the scheduler to its settings and CFG off.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-4.0,
                    max=4.0,
                    step=0.05,
                    tooltip="1 is the LoRA's full effect; 0 leaves it out.",
                ),
            ],
            outputs=[QwenPipeline.Output("lora_pipeline", display_name="pipeline")],
        )

    @classmethod
    def execute(cls, pipeline: LoadedPipeline, lora: str, strength: float) -> io.NodeOutput:
        loaded = pipeline.with_lora(lora_from_name(model_roots, lora, strength))
        return io.NodeOutput(loaded, ui=ui.PreviewText(f"LoRA stack: {loaded.loras.describe()}"))
