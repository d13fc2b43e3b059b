"""Reading LoRA files: every key style the pack meets gives the same factors and scale, alpha is
honoured (lightx2v's rank 64 / alpha 8 is 1/8 strength), and a bad file is refused naming the file,
the layer and the fix."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_files import LORA_STYLES, lora_keys, write_lora

from optim import LoraChoice, LoraStack, QwenFitError
from optim.files.lora_factors import match_layers, read_factors

SHAPES = {
    "transformer_blocks.0.attn.to_q": (32, 32),
    "transformer_blocks.0.img_mlp.net.0.proj": (128, 32),
    "transformer_blocks.1.img_mod.1": (192, 32),
}


@pytest.mark.parametrize("style", LORA_STYLES)
def test_every_key_style_reads_the_same_factors(tmp_path, style):
    path = tmp_path / f"{style}.safetensors"
    alpha = None if style == "peft" else 2.0
    written = write_lora(path, style, SHAPES, rank=4, alpha=alpha, seed=7, dtype=torch.float32)
    lora = match_layers(path, SHAPES)
    assert set(lora.layers) == set(SHAPES)
    factors = read_factors(lora)
    for layer, (down, up, scale) in written.items():
        assert torch.equal(factors[layer][0].float(), down) and torch.equal(factors[layer][1].float(), up)
        assert lora.layers[layer].scale == scale == (0.5 if alpha else 1.0)


def test_lightx2v_alpha_makes_rank_64_one_eighth_strong(tmp_path):
    """Regression guard: the Lightning files are rank 64, alpha 8; a reader ignoring alpha is 8x too strong."""
    path = tmp_path / "Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors"
    write_lora(path, "lightx2v", SHAPES, rank=64, alpha=8.0, seed=1)
    lora = match_layers(path, SHAPES)
    assert all(pair.rank == 64 and pair.scale == 0.125 for pair in lora.layers.values())
    assert LoraChoice(path).is_lightning and LoraChoice(path).lightning_steps == 4


def test_factors_are_read_once_per_file_version(tmp_path):
    path = tmp_path / "a.safetensors"
    write_lora(path, "kohya", SHAPES, rank=2, alpha=2.0, seed=1)
    first = read_factors(match_layers(path, SHAPES))
    assert read_factors(match_layers(path, SHAPES)) is first  # re-weighting reads nothing
    write_lora(path, "kohya", SHAPES, rank=2, alpha=2.0, seed=2)
    path.touch()  # another version of the file (size equal, modification time not)
    assert not torch.equal(
        read_factors(match_layers(path, SHAPES))["transformer_blocks.0.attn.to_q"][0],
        first["transformer_blocks.0.attn.to_q"][0],
    )


def _save(path, tensors):
    save_file(tensors, str(path))
    return path


def test_a_lora_for_another_model_is_refused(tmp_path):
    path = _save(
        tmp_path / "sdxl_style.safetensors",
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
        },
    )
    with pytest.raises(QwenFitError, match="changes no layer of this Qwen-Image transformer.*set lora to none"):
        match_layers(path, SHAPES)


def test_widths_of_another_model_are_refused_naming_the_layer(tmp_path):
    path = tmp_path / "wide.safetensors"
    write_lora(path, "comfy", {"transformer_blocks.0.attn.to_q": (64, 64)}, rank=4, alpha=4.0, seed=1)
    with pytest.raises(QwenFitError, match=r"wide.safetensors: layer transformer_blocks.0.attn.to_q is 32x32.*64x64"):
        match_layers(path, SHAPES)


def test_ranks_that_do_not_match_are_refused(tmp_path):
    down, up, alpha = lora_keys("lightx2v", "transformer_blocks.0.attn.to_q")
    path = _save(
        tmp_path / "r.safetensors", {down: torch.zeros(4, 32), up: torch.zeros(32, 8), alpha: torch.tensor(4.0)}
    )
    with pytest.raises(
        QwenFitError, match=r"r.safetensors: layer transformer_blocks.0.attn.to_q's ranks do not match.*remove"
    ):
        match_layers(path, SHAPES)


def test_a_nan_alpha_is_refused(tmp_path):
    down, up, alpha = lora_keys("kohya", "transformer_blocks.0.attn.to_q")
    path = _save(
        tmp_path / "n.safetensors", {down: torch.zeros(4, 32), up: torch.zeros(32, 4), alpha: torch.tensor(math.nan)}
    )
    with pytest.raises(QwenFitError, match="alpha nan, which is not a number.*remove it from the stack"):
        match_layers(path, SHAPES)


def test_half_a_pair_is_refused(tmp_path):
    down, _, _ = lora_keys("peft", "transformer_blocks.0.attn.to_q")
    path = _save(tmp_path / "h.safetensors", {down: torch.zeros(4, 32)})
    with pytest.raises(QwenFitError, match="has no lora_up.*incomplete"):
        match_layers(path, SHAPES)


@pytest.mark.parametrize("strength", [4.5, -100.0, math.nan, math.inf])
def test_a_strength_out_of_range_is_refused(tmp_path, strength):
    with pytest.raises(QwenFitError, match="lora_strength=.*use -4 to 4"):
        LoraChoice(tmp_path / "x.safetensors", strength)


def test_two_lightning_loras_in_one_stack_are_refused(tmp_path):
    stack = LoraStack().plus(LoraChoice(tmp_path / "Qwen-Lightning-4steps.safetensors"))
    stack = stack.plus(LoraChoice(tmp_path / "relight.safetensors", 0.5))
    assert stack.lightning.name == "Qwen-Lightning-4steps.safetensors"
    with pytest.raises(QwenFitError, match="two Lightning LoRAs.*Keep one of them"):
        stack.plus(LoraChoice(tmp_path / "other-lightning-8steps.safetensors"))


def test_modulation_factors_are_not_counted_on_the_gpu():
    """They stay on the host (run once per schedule); every other layer's factors are on the GPU."""
    from optim.files.lora_factors import LoraFile, LoraLayer
    from optim.qwen.anatomy import is_modulation_layer

    def pair(n_in: int, n_out: int) -> LoraLayer:
        return LoraLayer("d", "u", rank=4, in_features=n_in, out_features=n_out, alpha=4.0)

    layers = {
        "transformer_blocks.0.attn.to_q": pair(8, 8),
        "transformer_blocks.0.img_mod.1": pair(8, 48),
        "transformer_blocks_0_txt_mod_1": pair(8, 48),  # kohya's name before matching
    }
    lora = LoraFile(Path("x.safetensors"), layers, kohya=False)
    assert lora.factor_count == 4 * (16 + 56 + 56)
    assert lora.factor_count_on_gpu == 4 * 16
    assert [is_modulation_layer(n) for n in layers] == [False, True, True]
    assert not is_modulation_layer("transformer_blocks.0.img_mlp.net.2")
