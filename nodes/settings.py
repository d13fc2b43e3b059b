"""Settings nodes: each returns an immutable description; nothing is loaded or changed here.

Their inputs come from the core's one settings schema (``optim.SETTINGS_SCHEMA``), so a new setting
appears on its node, in the plan preview and in the browser at once.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..optim import (
    OFFLOAD_GROUP,
    PRECISION_GROUP,
    VAE_GROUP,
    OffloadSettings,
    PrecisionSettings,
    SettingsGroup,
    VaeSettings,
)
from .types import CATEGORY, OffloadConfig, PrecisionConfig, VaeConfig


def inputs_of(group: SettingsGroup) -> list[io.Combo.Input]:
    """The node's inputs, one per choice of ``group``."""
    return [
        io.Combo.Input(c.field, options=list(c.options), default=c.default, tooltip=c.tooltip, optional=c.optional)
        for c in group.choices
    ]


def _defaults(group: SettingsGroup, given: dict[str, str]) -> dict[str, str]:
    """Optional inputs a saved workflow lacks take their defaults."""
    return {c.field: given.get(c.field, c.default) for c in group.choices}


class PrecisionSelector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=PRECISION_GROUP.node_id,
            display_name="QwenFit Precision",
            category=CATEGORY,
            description="Choose the dtype of each Qwen-Image component. Connect to QwenFit Optimized Loader.",
            inputs=inputs_of(PRECISION_GROUP),
            outputs=[PrecisionConfig.Output("precision", display_name="precision")],
        )

    @classmethod
    def execute(cls, **choices: str) -> io.NodeOutput:
        return io.NodeOutput(PrecisionSettings(**_defaults(PRECISION_GROUP, choices)))


class OffloadToggle(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=OFFLOAD_GROUP.node_id,
            display_name="QwenFit Offload",
            category=CATEGORY,
            description="Where weights wait between uses. Connect to QwenFit Optimized Loader.",
            inputs=inputs_of(OFFLOAD_GROUP),
            outputs=[OffloadConfig.Output("offload", display_name="offload")],
        )

    @classmethod
    def execute(cls, **choices: str) -> io.NodeOutput:
        return io.NodeOutput(OffloadSettings(**_defaults(OFFLOAD_GROUP, choices)))


class VAESlicer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=VAE_GROUP.node_id,
            display_name="QwenFit VAE Tiling/Slicing",
            category=CATEGORY,
            description="Bound the VAE's memory. Connect to QwenFit Optimized Loader; changing it never reloads.",
            inputs=inputs_of(VAE_GROUP),
            outputs=[VaeConfig.Output("vae_settings", display_name="vae_settings")],
        )

    @classmethod
    def execute(cls, **choices: str) -> io.NodeOutput:
        return io.NodeOutput(VaeSettings(**_defaults(VAE_GROUP, choices)))
