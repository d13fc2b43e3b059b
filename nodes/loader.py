"""OptimizedLoader: pick a model (diffusers folder or ComfyUI split files), get a planned, cached pipeline."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..optim import (
    AUTO,
    PICKLE_SUFFIXES,
    VARIANT_CHOICES,
    LoadedPipeline,
    LoadRequest,
    OffloadSettings,
    PipelineCache,
    PipelineSource,
    PrecisionSettings,
    VaeSettings,
    lora_from_name,
    lora_names,
    model_names,
    source_from_names,
    text_encoder_names,
    vae_names,
)
from .comfy_glue import compute_device, free_comfy_models, model_roots, phase_checkpoint, qwen_tokenizer_dir
from .types import CATEGORY, OffloadConfig, PrecisionConfig, QwenPipeline, VaeConfig

# One loaded pipeline for the whole server: a new selection frees the previous one.
PIPELINES = PipelineCache()


def model_choices() -> list[str]:
    return model_names(model_roots)


def build_source(model: str, text_encoder: str, vae: str) -> PipelineSource:
    """The loader's three choices as files, through ComfyUI's model folders only."""
    return source_from_names(model_roots, model, text_encoder, vae, qwen_tokenizer_dir())


class OptimizedLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitOptimizedLoader",
            display_name="QwenFit Optimized Loader",
            category=CATEGORY,
            description="Load Qwen-Image-Edit (2509/2511), FireRed-Image-Edit or Qwen-Image-Layered from ComfyUI's "
            "split files (diffusion_models + text_encoders + vae) or a diffusers folder, planned for your GPU. "
            "Loads once; re-runs reuse it.",
            inputs=[
                io.Combo.Input(
                    "model",
                    options=model_choices(),
                    tooltip="A transformer file from models/diffusion_models (e.g. qwen_image_edit_2509_fp8_e4m3fn)"
                    " or a diffusers folder (with model_index.json) from models/diffusers.",
                ),
                io.Combo.Input(
                    "variant",
                    options=list(VARIANT_CHOICES),
                    default="auto",
                    tooltip="auto reads it from the weights (2511 and Layered files carry markers; FireRed-Image-Edit "
                    "is told by its name and runs as 2509); firered-edit names a FireRed file renamed otherwise; an "
                    "explicit choice the weights contradict is refused.",
                ),
                io.Combo.Input(
                    "text_encoder",
                    options=[AUTO, *text_encoder_names(model_roots)],
                    default=AUTO,
                    optional=True,
                    tooltip="From models/text_encoders. auto: qwen_2.5_vl_7b_fp8_scaled, else qwen_2.5_vl_7b "
                    "(a diffusers folder uses its own).",
                ),
                io.Combo.Input(
                    "vae",
                    options=[AUTO, *vae_names(model_roots)],
                    default=AUTO,
                    optional=True,
                    tooltip="From models/vae. auto: qwen_image_vae for Edit, qwen_image_layered_vae for Layered.",
                ),
                io.Combo.Input(
                    "lora",
                    options=["none", *lora_names(model_roots)],
                    default="none",
                    optional=True,
                    tooltip="A LoRA from models/loras, applied as each layer runs: changing it or its strength "
                    "never reloads the model. A Lightning LoRA (4/8 steps) also switches the scheduler to its "
                    "settings and CFG off. Stack more with QwenFit LoRA nodes.",
                ),
                io.Float.Input("lora_strength", default=1.0, min=-4.0, max=4.0, step=0.05, optional=True),
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
    def validate_inputs(cls, model: str) -> bool | str:
        # Checked when the prompt is queued, before anything runs. Only ``model`` is named, so ComfyUI
        # still checks every other input's type and range itself.
        model = str(model)  # an API prompt may send anything here
        if model.lower().endswith(PICKLE_SUFFIXES):
            return f"{model} is a pickle file; QwenFit never loads pickles (they can run code): use .safetensors."
        if model not in model_choices():
            return (
                f"model {model!r} is neither a file in models/diffusion_models nor a folder in models/diffusers. "
                "Copy it there, press R to refresh, and pick it."
            )
        return True

    @classmethod
    def execute(
        cls,
        model: str,
        variant: str,
        text_encoder: str = AUTO,
        vae: str = AUTO,
        lora: str = "none",
        lora_strength: float = 1.0,
        precision: PrecisionSettings | None = None,
        offload: OffloadSettings | None = None,
        vae_settings: VaeSettings | None = None,
    ) -> io.NodeOutput:
        request = LoadRequest(
            source=build_source(model, text_encoder, vae),
            variant=variant,
            precision=precision or PrecisionSettings(),
            offload=offload or OffloadSettings(),
            device=str(compute_device()),
        )
        choice = lora_from_name(model_roots, lora, lora_strength)  # a bad strength is refused before loading
        loaded = PIPELINES.get(request, before_load=free_comfy_models, checkpoint=phase_checkpoint)
        loaded = loaded.with_vae(vae_settings or VaeSettings()).with_lora(choice)
        plan = f"{loaded.describe_load()}\n{loaded.describe_default_plan()}"
        return io.NodeOutput(loaded, plan, ui=ui.PreviewText(plan))


def held(pipeline: LoadedPipeline) -> LoadedPipeline:
    """The pipeline a run node was given, loaded again when another selection replaced it since: QwenFit
    holds one pipeline at a time, and ComfyUI hands on a loader's earlier output without running it again."""
    if not pipeline.released:
        return pipeline
    current = PIPELINES.get(pipeline.request, before_load=free_comfy_models, checkpoint=phase_checkpoint)
    return pipeline.same_view_of(current)
