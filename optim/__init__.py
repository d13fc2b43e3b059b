"""QwenFit's optimization core: loading, planning and running Qwen-Image-Edit and -Layered.

Plain torch + diffusers; nothing here imports ComfyUI, so scripts and other UIs can use it.
"""

from .edit import EditJob, EditResult, run_edit
from .errors import QwenFitError
from .layered import LayeredJob, LayeredResult, run_layered
from .loading import LoadedPipeline, LoadRequest, inspect_folder, load_pipeline, release_memory
from .memory import MemorySnapshot, memory_snapshot
from .model_folders import list_pipeline_folders, resolve_pipeline_folder
from .pipeline_cache import PipelineCache
from .plan import ComponentPlacement, Plan
from .settings import OffloadSettings, PrecisionSettings, VaeSettings
from .sources import DiffusersFolder, PipelineSource, SplitFiles
from .variants import VARIANT_CHOICES, Variant

__all__ = [
    "ComponentPlacement",
    "DiffusersFolder",
    "PipelineSource",
    "SplitFiles",
    "EditJob",
    "EditResult",
    "LayeredJob",
    "LayeredResult",
    "LoadRequest",
    "LoadedPipeline",
    "MemorySnapshot",
    "OffloadSettings",
    "PipelineCache",
    "Plan",
    "PrecisionSettings",
    "QwenFitError",
    "VARIANT_CHOICES",
    "VaeSettings",
    "Variant",
    "inspect_folder",
    "list_pipeline_folders",
    "load_pipeline",
    "memory_snapshot",
    "release_memory",
    "resolve_pipeline_folder",
    "run_edit",
    "run_layered",
]
