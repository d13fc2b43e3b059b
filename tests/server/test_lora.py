"""LoRAs: kohya and diffusers formats merge to the same weights, exactly W + up @ down; a Lightning LoRA
switches the scheduler and CFG off, and says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAMPLE
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_files import MODELS, split_files

from optim import LoadRequest, PrecisionSettings, QwenFitError
from optim.files.lora import LIGHTNING_SHIFT, LoraChoice
from optim.loading.loader import load_pipeline

KOHYA = MODELS / "loras" / "qwenfit_tiny_Lightning-4steps_kohya.safetensors"
PEFT = MODELS / "loras" / "qwenfit_tiny_Lightning-4steps_diffusers.safetensors"
FP32 = PrecisionSettings(transformer="fp32", text_encoder="fp32", vae="fp32")


def test_merged_weight_is_base_plus_up_down_times_strength():
    files = split_files("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509")
    base = load_pipeline(LoadRequest(source=files, precision=FP32)).pipeline.transformer
    merged = load_pipeline(LoadRequest(source=files, precision=FP32, lora=LoraChoice(PEFT, 0.5))).pipeline.transformer
    lora = load_file(str(PEFT))
    down = lora["transformer.transformer_blocks.1.attn.to_q.lora_A.weight"]
    up = lora["transformer.transformer_blocks.1.attn.to_q.lora_B.weight"]
    expected = base.transformer_blocks[1].attn.to_q.weight + (up @ down) * 0.5
    assert torch.equal(merged.transformer_blocks[1].attn.to_q.weight, expected)
    assert torch.equal(
        merged.transformer_blocks[1].attn.to_out[0].weight, base.transformer_blocks[1].attn.to_out[0].weight
    )


def test_kohya_and_diffusers_formats_give_the_same_weights():
    files = split_files("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509")
    a = load_pipeline(LoadRequest(source=files, lora=LoraChoice(KOHYA))).pipeline
    b = load_pipeline(LoadRequest(source=files, lora=LoraChoice(PEFT))).pipeline
    for (name, x), (_, y) in zip(a.transformer.state_dict().items(), b.transformer.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    config = a.scheduler.config
    assert config.base_shift == config.max_shift == LIGHTNING_SHIFT and config.shift_terminal is None


def test_a_lora_for_another_model_is_refused(tmp_path):
    other = tmp_path / "sdxl_style_lora.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
        },
        str(other),
    )
    files = split_files("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509")
    with pytest.raises(QwenFitError, match="LoRA for another model"):
        load_pipeline(LoadRequest(source=files, lora=LoraChoice(other)))


def _graph(lora: str, steps: int = 4) -> dict:
    return {
        "1": {
            "class_type": "QwenFitOptimizedLoader",
            "inputs": {
                "model": "qwenfit_tiny_edit_2509_fp8_e4m3fn.safetensors",
                "variant": "auto",
                "lora": lora,
                "lora_strength": 1.0,
            },
        },
        "2": {"class_type": "LoadImage", "inputs": {"image": SAMPLE.name}},
        "3": {
            "class_type": "QwenFitInstructEdit",
            "inputs": {
                "pipeline": ["1", 0],
                "image": ["2", 0],
                "prompt": "winter",
                "negative_prompt": " ",
                "true_cfg_scale": 4.0,
                "steps": steps,
                "seed": 1,
                "width": 128,
                "height": 128,
            },
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"lora-{lora}"}},
    }


def test_lightning_lora_through_the_server_in_both_formats(comfy):
    outputs = {}
    for lora in ("none", KOHYA.name, PEFT.name):
        result = comfy.run(_graph(lora))
        assert result.status == "success", result.error_text()
        outputs[lora] = np.asarray(Image.open(result.files[0]))
        report = "\n".join(t for out in result.outputs.values() for t in out.get("text", []))
        if lora != "none":
            assert "Lightning LoRA" in report and "CFG off" in report and "made for 4 steps" in report
            assert "CFG off (1)" in report
    assert np.array_equal(outputs[KOHYA.name], outputs[PEFT.name])
    assert not np.array_equal(outputs["none"], outputs[KOHYA.name])
