"""Socket types the pack's nodes pass between each other."""

from comfy_api.latest import io

# A loaded pipeline (optim.LoadedPipeline) with its plan.
QwenPipeline = io.Custom("QWENFIT_PIPELINE")
# Immutable settings (optim.PrecisionSettings, OffloadSettings, VaeSettings).
PrecisionConfig = io.Custom("QWENFIT_PRECISION")
OffloadConfig = io.Custom("QWENFIT_OFFLOAD")
VaeConfig = io.Custom("QWENFIT_VAE")

CATEGORY = "QwenFit"
# ComfyUI's seed widgets go up to 2**64 - 1; torch generators accept the whole range.
SEED_MAX = 0xFFFFFFFFFFFFFFFF
