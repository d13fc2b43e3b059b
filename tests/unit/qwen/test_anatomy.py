"""One predicate per fact, right in both key spaces: the modules' names and the files' names."""

from __future__ import annotations

import pytest
from tiny_files import LAYOUTS, MODELS, TE_BF16

from optim.files.safetensors_file import SafetensorsFile
from optim.qwen.anatomy import is_language_block_linear, is_modulation_key, is_text_unit_key

MODULATION = "transformer_blocks.7.img_mod.1.weight"


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_modulation_keys_with_and_without_comfyui_prefix(prefix):
    assert is_modulation_key(prefix + MODULATION)
    assert is_modulation_key(prefix + "transformer_blocks.0.txt_mod.1.bias")
    assert not is_modulation_key(prefix + "transformer_blocks.7.attn.to_q.weight")
    assert not is_modulation_key(prefix + "time_text_embed.timestep_embedder.linear_1.weight")


@pytest.mark.parametrize(
    ("key", "unit"),
    [
        ("model.language_model.layers.3.mlp.up_proj.weight", True),  # transformers 5 module name
        ("model.layers.3.mlp.up_proj.weight", True),  # ComfyUI's file (original layout)
        ("model.visual.blocks.2.attn.qkv.weight", True),
        ("visual.blocks.2.attn.qkv.weight", True),
        ("model.language_model.embed_tokens.weight", False),
        ("lm_head.weight", False),
        ("visual.merger.mlp.0.weight", False),
    ],
)
def test_text_units_in_both_layouts(key, unit):
    assert is_text_unit_key(key) is unit


def test_the_real_files_have_what_the_predicates_look_for():
    """Regression: a rename of the predicates once matched only the modules' names, so the host-memory
    estimate from a ComfyUI text-encoder file counted no units at all."""
    text_encoder = SafetensorsFile(MODELS / "text_encoders" / TE_BF16)
    units = [k for k in text_encoder.tensors if is_text_unit_key(k)]
    assert len(units) > len(text_encoder.tensors) // 2
    assert any(is_language_block_linear(k.removesuffix(".weight")) for k in units)
    for transformer, *_ in LAYOUTS:
        keys = SafetensorsFile(MODELS / "diffusion_models" / transformer).tensors
        assert any(is_modulation_key(k) for k in keys), transformer
