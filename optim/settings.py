"""The user's choices: one schema, and the immutable settings values built from it.

Settings are values, not mutations: the settings nodes return these, the loader and the planner turn
them into a plan. They are frozen and hashable, so they can key caches.

``SETTINGS_SCHEMA`` is the one description of every choice: its field, its options, its default, its
tooltip and its name in the plan preview's query. The settings nodes build their inputs from it, the
preview route parses its query with it and the browser reads it from ``/qwenfit/settings_schema``, so a
new setting is added here once and appears everywhere (tests/unit/test_settings.py checks each place).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import QwenFitError

GIB = 1024**3

# "auto" lets the planner decide: bf16 on a GPU, fp32 on a CPU (bf16 matmuls are slow there).
# fp8_e4m3fn stores Linear weights in fp8 with a per-tensor scale and computes in the auto dtype.
FP8 = "fp8_e4m3fn"
# Weight-only integer formats: int8 per row, nf4 in blocks of 64 (optim/quant/).
INT8, NF4 = "int8", "nf4"
# fp8 weights multiplied in fp8 (activations quantized per token): GPUs with compute capability >= 8.9.
FP8_FAST = "fp8_e4m3fn_fast"
# The speed ladder (optim/planning/speed_ladder.py): exact, fast (8-bit products), fastest (+ step cache).
SPEEDS = ("auto", "exact", "fast", "fastest")
DENSE_PRECISIONS = ("bf16", "fp16", "fp32")
COMPRESSED_PRECISIONS = (FP8, FP8_FAST, INT8, NF4)
PRECISIONS = ("auto", *DENSE_PRECISIONS, *COMPRESSED_PRECISIONS)
OFFLOAD_MODES = ("auto", "none", "model", "blocks")
# Usable GiB per card: the CUDA context, the desktop and the browser take the rest
# (an 8 GB card leaves about 7 GiB to PyTorch).
CARD_BUDGETS = {"8 GB": 7.0, "12 GB": 10.75, "16 GB": 14.5, "24 GB": 22.0, "48 GB": 45.0}
VRAM_BUDGETS = ("auto", *CARD_BUDGETS, "unlimited")
# Host budgets users can name; "minimal" reads every once-per-run weight from the files.
HOST_SIZES = {"16 GB": 16, "24 GB": 24, "32 GB": 32, "64 GB": 64}
HOST_BUDGETS = ("auto", "minimal", *HOST_SIZES, "unlimited")
# How prompt and negative prompt share a pass over the weights (optim/execution/transformer_engine.py).
CFG_MODES = ("batched", "interleaved", "two_calls")
GPU_CHOICES = ("one", "all")
# How several GPUs share a job (optim/planning/strategy_choice.py says how "auto" picks).
MULTI_GPU_STRATEGIES = ("auto", "cfg_parallel", "sequence_parallel", "split")
SWITCHES = ("auto", "on", "off")

_PRECISION_TIP = (
    "auto: as the file stores it (an fp8 file stays fp8), computing in bf16 on a GPU, fp32 on a CPU. "
    "fp8_e4m3fn: fp8 storage, bf16 compute, any GPU. fp8_e4m3fn_fast: fp8 matmuls (RTX 40xx/50xx, "
    "H100/H200 and newer). int8 / nf4: weight-only 8-bit / 4-bit storage (smaller, slower to expand). "
    "fp16 is offered but this model overflows in fp16 (NaN/black images): use it only to test."
)


@dataclass(frozen=True)
class Choice:
    """One setting: the settings field (also the node's input name), what may be picked, and how the
    plan preview's query names it."""

    field: str
    options: tuple[str, ...]
    default: str
    tooltip: str
    query: str
    label: str  # how error messages name it
    optional: bool = False  # an optional node input: workflows saved before it existed still load


@dataclass(frozen=True)
class SettingsGroup:
    """The choices of one settings node, and the loader input it connects to."""

    loader_input: str  # "precision", "offload", "vae_settings"
    node_id: str
    choices: tuple[Choice, ...]

    def choice(self, field: str) -> Choice:
        return next(c for c in self.choices if c.field == field)


_SPEED_TIP = (
    "exact: the reference's numbers (weights expanded to bf16). fast: the transformer multiplies in 8 bits "
    "(fp8 on RTX 40xx/50xx, H100 and newer; int8 on RTX 20xx/30xx, A100), activations quantized per token, "
    "compiled blocks where Triton is installed: about 2x faster, small deviation. fastest: fast plus a step "
    "cache (about every other step predicted from the last two): faster again, larger deviation. auto: fast, "
    "uncompiled, where ComfyUI's own nodes multiply the same file in 8 bits (scaled and mixed fp8 files on fp8 "
    "GPUs, Comfy-Org int8 files before Hopper) and Triton is installed; else exact."
)
PRECISION_GROUP = SettingsGroup(
    "precision",
    "QwenFitPrecisionSelector",
    (
        *(
            Choice(part, PRECISIONS, "auto", _PRECISION_TIP, f"precision_{part}", f"precision of {part}")
            for part in ("transformer", "text_encoder", "vae")
        ),
        Choice("speed", SPEEDS, "auto", _SPEED_TIP, "speed", "speed", optional=True),
    ),
)
OFFLOAD_GROUP = SettingsGroup(
    "offload",
    "QwenFitOffloadToggle",
    (
        Choice(
            "mode",
            OFFLOAD_MODES,
            "auto",
            "auto: the planner fits the VRAM budget, keeping as many transformer blocks on the GPU as fit and "
            "streaming the rest from pinned host memory. none: everything on the GPU. model: diffusers' "
            "whole-component offload (slow). blocks: stream every transformer block.",
            "offload_mode",
            "offload mode",
        ),
        Choice(
            "vram_budget",
            VRAM_BUDGETS,
            "auto",
            "The card the plan must fit: auto uses the memory free when the model loads; a card size keeps the "
            "whole generation (text encoding, denoising, VAE) within what PyTorch can use on such a card "
            "(8 GB -> 7.0 GiB); unlimited keeps everything resident.",
            "vram_budget",
            "VRAM budget",
        ),
        Choice(
            "host_budget",
            HOST_BUDGETS,
            "auto",
            "The machine's RAM the plan is for (auto: this machine's); the weights keep about five eighths of it "
            "(16 GB -> 10 GiB). When short, the text encoder (used once per new prompt), then the modulation "
            "layers (once per new step count), then the first transformer blocks stay in the model files and are "
            "read at each use: same images; a new prompt takes a few seconds more, and blocks read at every step "
            "are fast while the files sit in the page cache. minimal: read all of them from the files always.",
            "host_budget",
            "host RAM budget",
            optional=True,
        ),
        Choice(
            "cfg",
            CFG_MODES,
            "batched",
            "How prompt and negative prompt share each pass over the weights. batched: one matmul for both, "
            "fastest; may differ from the reference by bf16 rounding. interleaved: the same numbers as "
            "diffusers' two calls, about 1% slower (10-15% with fp8/int8/nf4 weights). two_calls: as diffusers "
            "(streamed weights cross twice).",
            "cfg_pass",
            "CFG pass",
            optional=True,
        ),
        Choice(
            "gpus",
            GPU_CHOICES,
            "one",
            "one: the GPU ComfyUI runs on. all: that GPU first, then every other visible GPU, each within the "
            "VRAM budget. With fewer GPUs the plan says what it fell back to.",
            "gpus",
            "GPUs",
            optional=True,
        ),
        Choice(
            "multi_gpu",
            MULTI_GPU_STRATEGIES,
            "auto",
            "How several GPUs share the work. cfg_parallel (CFG on): two GPUs compute the prompt and the negative "
            "prompt at the same time, each streaming what it cannot hold from the one copy in host memory (about "
            "half the time per step). sequence_parallel (CFG off, e.g. Lightning): every GPU computes its share of "
            "the image, shared by each GPU's measured speed. split: the blocks spread over the GPUs, so big models "
            "run without streaming. auto: the planner picks the fastest that fits and the plan says why.",
            "multi_gpu",
            "multi-GPU strategy",
            optional=True,
        ),
    ),
)
VAE_GROUP = SettingsGroup(
    "vae_settings",
    "QwenFitVAESlicer",
    (
        Choice(
            "tiling",
            SWITCHES,
            "auto",
            "Tile the VAE: far less VRAM for large images, a little slower. auto: the planner tiles only "
            "what would not fit untiled (whole-model offload: always).",
            "vae_tiling",
            "VAE tiling",
        ),
        Choice(
            "slicing",
            SWITCHES,
            "auto",
            "Decode one image (or layer) at a time. auto: on for Layered.",
            "vae_slicing",
            "VAE slicing",
        ),
    ),
)
SETTINGS_SCHEMA = (PRECISION_GROUP, OFFLOAD_GROUP, VAE_GROUP)


def setting_error(field: str, message: str) -> QwenFitError:
    """A value the settings refuse, with ``field`` naming its setting (the preview route reports that
    setting's query parameter); still a plain QwenFitError, as ComfyUI shows it to users."""
    error = QwenFitError(message)
    error.field = field
    return error


def _check(group: SettingsGroup, values: object) -> None:
    for choice in group.choices:
        value = getattr(values, choice.field)
        if value not in choice.options:
            raise setting_error(
                choice.field, f"{choice.label}={value!r} is not supported; pick one of {', '.join(choice.options)}."
            )


@dataclass(frozen=True)
class PrecisionSettings:
    """Compute/storage dtype per component, and the speed rung of the transformer's arithmetic."""

    transformer: str = "auto"
    text_encoder: str = "auto"
    vae: str = "auto"
    speed: str = "auto"

    def __post_init__(self) -> None:
        _check(PRECISION_GROUP, self)
        if self.vae in COMPRESSED_PRECISIONS:
            raise setting_error(
                "vae",
                f"the VAE cannot be stored in {self.vae} (it is only 0.25 GB and its convolutions are not "
                "Linear layers); pick auto, bf16 or fp32 for the VAE.",
            )


@dataclass(frozen=True)
class OffloadSettings:
    """Where weights live between uses, and how CFG and several GPUs share the work.

    ``mode``: ``auto`` (the planner fits the ``vram_budget``), ``none`` (everything on the GPU),
    ``model`` (diffusers' whole-component offload) or ``blocks`` (stream every transformer block).
    ``vram_budget``: a card size, "auto" (the memory free at load time) or "unlimited".
    ``host_budget`` bounds the host RAM the weights keep between runs (optim/planning/host_memory.py).
    ``cfg``: "batched" (fastest), "interleaved" (bit-identical to two calls) or "two_calls".
    ``gpus``: "one" (the host's device) or "all" (every visible GPU, each within ``vram_budget``);
    ``multi_gpu``: how several GPUs share the work ("auto", "cfg_parallel", "sequence_parallel", "split").
    """

    mode: str = "auto"
    vram_budget: str = "auto"
    host_budget: str = "auto"
    cfg: str = "batched"
    gpus: str = "one"
    multi_gpu: str = "auto"

    def __post_init__(self) -> None:
        _check(OFFLOAD_GROUP, self)


@dataclass(frozen=True)
class VaeSettings:
    """VAE tiling (bounded VAE memory for large images) and slicing (one image at a time)."""

    tiling: str = "auto"
    slicing: str = "auto"

    def __post_init__(self) -> None:
        _check(VAE_GROUP, self)


SETTINGS_TYPES: dict[str, type] = {
    PRECISION_GROUP.loader_input: PrecisionSettings,
    OFFLOAD_GROUP.loader_input: OffloadSettings,
    VAE_GROUP.loader_input: VaeSettings,
}


def schema_json() -> list[dict[str, object]]:
    """The schema as the browser reads it (``/qwenfit/settings_schema``)."""
    return [
        {
            "loader_input": g.loader_input,
            "node_id": g.node_id,
            "choices": [
                {"field": c.field, "query": c.query, "options": list(c.options), "default": c.default}
                for c in g.choices
            ],
        }
        for g in SETTINGS_SCHEMA
    ]
