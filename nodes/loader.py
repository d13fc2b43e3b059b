"""OptimizedLoader: pick a model folder, get a planned, cached pipeline."""

from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io, ui

from ..optim.loading import LoadRequest
from ..optim.model_folders import list_pipeline_folders, resolve_pipeline_folder
from ..optim.pipeline_cache import PipelineCache
from ..optim.settings import OffloadSettings, PrecisionSettings, VaeSettings
from ..optim.variants import VARIANT_CHOICES
from .comfy_glue import compute_device, diffusers_model_roots, free_comfy_models
from .types import CATEGORY, OffloadConfig, PrecisionConfig, QwenPipeline, VaeConfig

# One loaded pipeline for the whole server: a new selection frees the previous one.
PIPELINES = PipelineCache()


class OptimizedLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitOptimizedLoader",
            display_name="QwenFit Optimized Loader",
            category=CATEGORY,
            description="Load Qwen-Image-Edit (2509/2511) or Qwen-Image-Layered from a diffusers folder in "
            "models/diffusers, planned for your GPU. Loads once; re-runs reuse it.",
            inputs=[
                io.Combo.Input(
                    "model",
                    options=list_pipeline_folders(diffusers_model_roots()),
                    tooltip="A diffusers-format folder (with model_index.json) under models/diffusers.",
                ),
                io.Combo.Input(
                    "variant",
                    options=list(VARIANT_CHOICES),
                    default="auto",
                    tooltip="auto reads it from the weights; an explicit choice the weights contradict is refused.",
                ),
                PrecisionConfig.Input("precision", optional=True, tooltip="From QwenFit Precision; default auto."),
                OffloadConfig.Input("offload", optional=True, tooltip="From QwenFit Offload; default auto."),
                VaeConfig.Input(
                    "vae_settings", optional=True, tooltip="From QwenFit VAE Tiling/Slicing; default auto."
                ),
            ],
            outputs=[
                QwenPipeline.Output("pipeline", display_name="pipeline"),
                io.String.Output("plan", display_name="plan"),
            ],
        )

    @classmethod
    def validate_inputs(cls, model: str, **_: object) -> bool | str:
        # Checked when the prompt is queued, before anything runs.
        if model not in list_pipeline_folders(diffusers_model_roots()):
            return (
                f"model folder {model!r} is not in models/diffusers. Copy a diffusers-format folder "
                "(with model_index.json) there, press R to refresh, and pick it."
            )
        return True

    @classmethod
    def execute(
        cls,
        model: str,
        variant: str,
        precision: PrecisionSettings | None = None,
        offload: OffloadSettings | None = None,
        vae_settings: VaeSettings | None = None,
    ) -> io.NodeOutput:
        folder = resolve_pipeline_folder(diffusers_model_roots(), model)
        request = LoadRequest(
            folder=Path(folder),
            variant=variant,
            precision=precision or PrecisionSettings(),
            offload=offload or OffloadSettings(),
            device=str(compute_device()),
        )
        loaded = PIPELINES.get(request, before_load=free_comfy_models).with_vae(vae_settings or VaeSettings())
        plan = loaded.plan.describe()
        return io.NodeOutput(loaded, plan, ui=ui.PreviewText(plan))
