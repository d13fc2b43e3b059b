"""OptimizedLoader: pick a model (diffusers folder or ComfyUI split files), get a planned, cached pipeline."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..optim.errors import QwenFitError
from ..optim.loading import LoadRequest
from ..optim.lora import LoraChoice
from ..optim.model_folders import list_pipeline_folders, resolve_pipeline_folder
from ..optim.pipeline_cache import PipelineCache
from ..optim.settings import OffloadSettings, PrecisionSettings, VaeSettings
from ..optim.sources import DiffusersFolder, PipelineSource, SplitFiles, transformer_variant
from ..optim.variants import VARIANT_CHOICES
from ..optim.weight_files import (
    AUTO,
    STANDARD_TEXT_ENCODERS,
    STANDARD_TRANSFORMERS,
    STANDARD_VAES,
    TEXT_ENCODER_HINTS,
    VAE_HINTS,
    list_weight_files,
    pick_default,
    resolve_weight_file,
)
from ..optim.weights.safetensors_file import PICKLE_SUFFIXES
from .comfy_glue import compute_device, free_comfy_models, model_roots, phase_checkpoint, qwen_tokenizer_dir
from .types import CATEGORY, OffloadConfig, PrecisionConfig, QwenPipeline, VaeConfig

# One loaded pipeline for the whole server: a new selection frees the previous one.
PIPELINES = PipelineCache()


def model_choices() -> list[str]:
    """Transformer files from diffusion_models (Comfy-Org's names first: the default is the first
    one present), then diffusers folders."""
    return list_weight_files(model_roots("diffusion_models"), STANDARD_TRANSFORMERS) + list_pipeline_folders(
        model_roots("diffusers")
    )


def _is_file(model: str) -> bool:
    return model.lower().endswith(".safetensors")


def build_source(model: str, text_encoder: str, vae: str) -> PipelineSource:
    """Resolve the loader's three choices to files, through ComfyUI's model folders only."""
    if not _is_file(model):
        if text_encoder != AUTO or vae != AUTO:
            raise QwenFitError(
                f"'{model}' is a diffusers folder, which brings its own text encoder and VAE: set text_encoder and "
                "vae to auto, or pick a transformer file from diffusion_models to combine with separate files."
            )
        return DiffusersFolder(resolve_pipeline_folder(model_roots("diffusers"), model))
    transformer = resolve_weight_file(model_roots("diffusion_models"), model, "diffusion_models")
    te_names = list_weight_files(model_roots("text_encoders"))
    vae_names = list_weight_files(model_roots("vae"))
    if text_encoder == AUTO:
        text_encoder = pick_default(
            te_names, STANDARD_TEXT_ENCODERS, TEXT_ENCODER_HINTS, "Qwen2.5-VL text encoder", "text_encoders"
        )
    if vae == AUTO:
        variant = transformer_variant(transformer)
        vae = pick_default(vae_names, STANDARD_VAES[variant], VAE_HINTS[variant], f"{variant.value} VAE", "vae")
    return SplitFiles(
        transformer=transformer,
        text_encoder=resolve_weight_file(model_roots("text_encoders"), text_encoder, "text_encoders"),
        vae=resolve_weight_file(model_roots("vae"), vae, "vae"),
        tokenizer=qwen_tokenizer_dir(),
    )


class OptimizedLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitOptimizedLoader",
            display_name="QwenFit Optimized Loader",
            category=CATEGORY,
            description="Load Qwen-Image-Edit (2509/2511) or Qwen-Image-Layered from ComfyUI's split files "
            "(diffusion_models + text_encoders + vae) or a diffusers folder, planned for your GPU. "
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
                    tooltip="auto reads it from the weights (2511 and Layered files carry markers); an explicit "
                    "choice the weights contradict is refused.",
                ),
                io.Combo.Input(
                    "text_encoder",
                    options=[AUTO] + list_weight_files(model_roots("text_encoders"), STANDARD_TEXT_ENCODERS),
                    default=AUTO,
                    optional=True,
                    tooltip="From models/text_encoders. auto: qwen_2.5_vl_7b_fp8_scaled, else qwen_2.5_vl_7b "
                    "(a diffusers folder uses its own).",
                ),
                io.Combo.Input(
                    "vae",
                    options=[AUTO] + list_weight_files(model_roots("vae")),
                    default=AUTO,
                    optional=True,
                    tooltip="From models/vae. auto: qwen_image_vae for Edit, qwen_image_layered_vae for Layered.",
                ),
                io.Combo.Input(
                    "lora",
                    options=["none"] + list_weight_files(model_roots("loras")),
                    default="none",
                    optional=True,
                    tooltip="A LoRA from models/loras, merged into the weights at load. A Lightning LoRA (4/8 "
                    "steps) also switches the scheduler to its settings and CFG off.",
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
            lora=None
            if lora == "none"
            else LoraChoice(resolve_weight_file(model_roots("loras"), lora, "loras"), float(lora_strength)),
        )
        loaded = PIPELINES.get(request, before_load=free_comfy_models, checkpoint=phase_checkpoint)
        loaded = loaded.with_vae(vae_settings or VaeSettings())
        plan = loaded.plan.describe()
        return io.NodeOutput(loaded, plan, ui=ui.PreviewText(plan))
