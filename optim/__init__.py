"""QwenFit's core: loading, planning and running Qwen-Image-Edit (2509/2511) and Qwen-Image-Layered.

Plain torch + diffusers; nothing here imports ComfyUI, so scripts and other UIs can use it. This
module is the public surface (``nodes/`` imports nothing else); the folders are layers, each importing
only the ones below it (README, Developers; checked by tests/unit/test_import_contract.py):

    settings, errors <- qwen <- files <- quant <- planning <- execution <- loading, monitoring <- jobs
"""

from .errors import QwenFitError
from .execution.host_arena import arena_bytes
from .execution.loaded_pipeline import LoadedPipeline, release_memory
from .files.lora import LoraChoice, LoraStack
from .files.model_choices import (
    ModelRoots,
    is_weight_file,
    lora_from_name,
    lora_names,
    lora_stack_from_names,
    model_names,
    source_from_names,
    text_encoder_names,
    vae_names,
)
from .files.model_folders import list_pipeline_folders, resolve_pipeline_folder
from .files.safetensors_file import PICKLE_SUFFIXES
from .files.sources import DiffusersFolder, PipelineSource, SplitFiles, inspect_folder
from .files.weight_files import AUTO
from .jobs.compositing import checkerboard_composite
from .jobs.crop_and_stitch import MASK_MODES, MAX_CONTEXT_MARGIN, MAX_FEATHER, MaskedPicture, MaskSettings
from .jobs.edit import EditJob, EditResult, run_edit
from .jobs.images import check_image_batch, check_one_image, tensor_to_pil, with_alpha_from_mask
from .jobs.layered import LayeredJob, LayeredResult, run_layered
from .jobs.plan_preview import MASKED_PREVIEW_NOTE, Preview, PreviewSettings, preview, same_pipeline
from .jobs.psd_export import save_layers_psd
from .loading.library_imports import import_libraries_in_background
from .loading.loader import load_pipeline
from .loading.pipeline_cache import PipelineCache
from .monitoring.memory_chart import draw_run_chart
from .monitoring.memory_sampler import MemorySample, MemorySampler, PhaseMark, last_run_window
from .monitoring.monitor_report import monitor_report
from .monitoring.run_record import RunRecord, add_run_observer, last_run, remove_run_observer
from .planning.load_request import LoadRequest
from .planning.plan import ComponentPlacement, Plan
from .planning.planner import Gpu, plan_run
from .qwen import job_limits
from .qwen.variants import VARIANT_CHOICES, Variant
from .settings import (
    OFFLOAD_GROUP,
    PRECISION_GROUP,
    SETTINGS_SCHEMA,
    SETTINGS_TYPES,
    VAE_GROUP,
    Choice,
    OffloadSettings,
    PrecisionSettings,
    SettingsGroup,
    VaeSettings,
    schema_json,
)

__all__ = [
    "AUTO",
    "Choice",
    "ComponentPlacement",
    "DiffusersFolder",
    "EditJob",
    "EditResult",
    "Gpu",
    "LayeredJob",
    "LayeredResult",
    "LoadRequest",
    "LoraChoice",
    "LoraStack",
    "LoadedPipeline",
    "MASKED_PREVIEW_NOTE",
    "MASK_MODES",
    "MAX_CONTEXT_MARGIN",
    "MAX_FEATHER",
    "MaskSettings",
    "MaskedPicture",
    "MemorySample",
    "MemorySampler",
    "ModelRoots",
    "OFFLOAD_GROUP",
    "OffloadSettings",
    "PICKLE_SUFFIXES",
    "PRECISION_GROUP",
    "PhaseMark",
    "PipelineCache",
    "PipelineSource",
    "Plan",
    "PrecisionSettings",
    "Preview",
    "PreviewSettings",
    "QwenFitError",
    "RunRecord",
    "SETTINGS_SCHEMA",
    "SETTINGS_TYPES",
    "SettingsGroup",
    "SplitFiles",
    "VAE_GROUP",
    "VARIANT_CHOICES",
    "VaeSettings",
    "Variant",
    "add_run_observer",
    "arena_bytes",
    "check_image_batch",
    "check_one_image",
    "checkerboard_composite",
    "draw_run_chart",
    "inspect_folder",
    "is_weight_file",
    "job_limits",
    "last_run",
    "last_run_window",
    "list_pipeline_folders",
    "load_pipeline",
    "import_libraries_in_background",
    "lora_from_name",
    "lora_names",
    "lora_stack_from_names",
    "model_names",
    "monitor_report",
    "plan_run",
    "preview",
    "release_memory",
    "remove_run_observer",
    "resolve_pipeline_folder",
    "run_edit",
    "run_layered",
    "same_pipeline",
    "save_layers_psd",
    "schema_json",
    "source_from_names",
    "tensor_to_pil",
    "text_encoder_names",
    "vae_names",
    "with_alpha_from_mask",
]
