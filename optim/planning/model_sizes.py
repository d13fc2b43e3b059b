"""Byte sizes of a loaded pipeline's parts, as the planner needs them (measured from the modules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..files.tensor_layout import layout_of
from ..quant.compressed_linear import compressed_layers
from ..qwen.anatomy import MODULATION_LAYERS, is_modulation, text_host_modules, text_units


def _bytes(module: nn.Module, skip=lambda name: False) -> int:
    return layout_of(module, skip).nbytes


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of every part the planner places (aligned as the streamer packs them)."""

    blocks: int
    block_bytes: int  # the largest block without its modulation layers
    modulation_bytes: int  # img_mod + txt_mod of all blocks
    transformer_rest_bytes: int  # embedders, output layers
    text_units: int
    text_unit_bytes: int  # the largest vision block or language layer
    text_units_bytes: int  # all of them
    text_rest_bytes: int  # patch embed, merger, final norm (kept on the GPU while encoding)
    text_host_bytes: int  # token embedding and lm_head (kept on the host)
    vae_bytes: int
    hidden: int
    dequant_workspace_bytes: int = 0  # temporaries of expanding the largest compressed weight
    attention_heads: int = 0  # measured from the model; 0: Qwen-Image's 128-wide heads (sizes read from headers)

    @property
    def heads(self) -> int:
        """Attention heads per block (what sequence parallelism shares out)."""
        return self.attention_heads or self.hidden // 128

    @property
    def transformer_bytes(self) -> int:
        return self.blocks * self.block_bytes + self.modulation_bytes + self.transformer_rest_bytes

    @property
    def text_encoder_bytes(self) -> int:
        return self.text_units_bytes + self.text_rest_bytes + self.text_host_bytes


def _dequant_workspace(module: nn.Module) -> int:
    """Temporaries of expanding the largest compressed weight of ``module`` (its format's own figure)."""
    layers = compressed_layers(module)
    return max((m.workspace_per_weight * m.in_features * m.out_features for m in layers), default=0)


def measure(pipeline: Any) -> ModelSizes:
    """Sizes of ``pipeline``'s transformer, text encoder and VAE."""
    tr = pipeline.transformer
    blocks = list(tr.transformer_blocks)
    block_bytes = max(_bytes(b, is_modulation) for b in blocks)
    modulation = sum(_bytes(getattr(b, n)) for b in blocks for n in MODULATION_LAYERS)
    transformer_total = _bytes(tr)
    te = pipeline.text_encoder
    units = text_units(te)
    unit_sizes = [_bytes(u) for u in units]
    host = sum(_bytes(m) for m in text_host_modules(te))
    te_total = _bytes(te)
    return ModelSizes(
        blocks=len(blocks),
        block_bytes=block_bytes,
        modulation_bytes=modulation,
        transformer_rest_bytes=transformer_total - sum(_bytes(b) for b in blocks),
        text_units=len(units),
        text_unit_bytes=max(unit_sizes),
        text_units_bytes=sum(unit_sizes),
        text_rest_bytes=te_total - sum(unit_sizes) - host,
        text_host_bytes=host,
        vae_bytes=_bytes(pipeline.vae),
        hidden=int(tr.inner_dim),
        dequant_workspace_bytes=_dequant_workspace(tr.transformer_blocks[0]),
        attention_heads=int(tr.config.num_attention_heads),
    )
