"""LoRAs through the real server: the loader's LoRA and QwenFit LoRA nodes stack at run time; three
LoRAs in mixed key styles give the image of hand-merged bf16 weights; changing a strength or removing a
LoRA changes the image and loads nothing; bad LoRAs are refused naming the fix, nothing reloads, and
the next prompt runs. A Lightning LoRA switches the scheduler and CFG off, and says so."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import SAMPLE
from PIL import Image
from safetensors.torch import load_file, save_file
from test_bad_input_corpus import queue
from tiny_files import MODELS, block_layers, layer_shapes, lora_keys, write_lora

KOHYA = MODELS / "loras" / "qwenfit_tiny_Lightning-4steps_kohya.safetensors"
PEFT = MODELS / "loras" / "qwenfit_tiny_Lightning-4steps_diffusers.safetensors"
BASE = "qwenfit_tiny_edit_2511_bf16.safetensors"
MERGED = "qwenfit_tiny_edit_2511_merged_by_hand.safetensors"
_seeds = itertools.count(100)  # a fresh seed keeps ComfyUI from answering from its cache


def _graph(model: str, loras: list[tuple[str, float]] = (), steps: int = 2, seed: int = 1) -> dict:
    """Loader (with the first LoRA, if any) -> one QwenFit LoRA node per further LoRA -> edit -> save."""
    first, strength = loras[0] if loras else ("none", 1.0)
    nodes = {
        "1": {
            "class_type": "QwenFitOptimizedLoader",
            "inputs": {"model": model, "variant": "auto", "lora": first, "lora_strength": strength},
        },
        "2": {"class_type": "LoadImage", "inputs": {"image": SAMPLE.name}},
    }
    source = ["1", 0]
    for i, (name, weight) in enumerate(loras[1:]):
        nodes[f"l{i}"] = {"class_type": "QwenFitLora", "inputs": {"pipeline": source, "lora": name, "strength": weight}}
        source = [f"l{i}", 0]
    nodes["3"] = {
        "class_type": "QwenFitInstructEdit",
        "inputs": {
            "pipeline": source,
            "image": ["2", 0],
            "prompt": "winter",
            "negative_prompt": " ",
            "true_cfg_scale": 4.0,
            "steps": steps,
            "seed": seed,
            "width": 128,
            "height": 128,
        },
    }
    nodes["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "lora"}}
    return nodes


def _image(result) -> np.ndarray:
    assert result.status == "success", result.error_text()
    return np.asarray(Image.open(result.files[0])).astype(np.int16)


def _report(result) -> str:
    return "\n".join(t for out in result.outputs.values() for t in out.get("text", []))


def _loads(comfy) -> int:
    """How many models the server loaded so far (PipelineCache logs each load as it starts)."""
    return comfy.log().count("QwenFit: loading ")


STACK = [  # (file, key style, layers it changes, rank, alpha, strength)
    ("stack_a_kohya.safetensors", "kohya", ("attn.to_q", "img_mlp"), 4, 2.0, 0.8),
    ("stack_b_peft.safetensors", "peft", ("attn.to_q", "add_k_proj", "txt_mlp.net.2"), 2, None, 1.0),
    ("stack_c_lightx2v.safetensors", "lightx2v", ("to_out", "img_mod"), 8, 1.0, -1.5),
]


@pytest.fixture(scope="module")
def stack(comfy) -> list[tuple[str, float]]:
    """Three LoRAs in the server's loras folder, and the base transformer with them merged by hand into its
    bf16 weights in diffusion_models."""
    shapes = layer_shapes(MODELS / "diffusion_models" / BASE)
    tensors = {k: v.float() for k, v in load_file(str(MODELS / "diffusion_models" / BASE)).items()}
    for seed, (name, style, parts, rank, alpha, strength) in enumerate(STACK):
        factors = write_lora(comfy.base / "models" / "loras" / name, style, block_layers(shapes, *parts), rank, alpha,
                             seed, size=1.0)  # fmt: skip
        for layer, (down, up, scale) in factors.items():
            tensors[f"{layer}.weight"] += (up @ down) * (scale * strength)
    merged = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(merged, str(comfy.base / "models" / "diffusion_models" / MERGED))
    return [(name, strength) for name, *_, strength in STACK]


def test_a_stack_of_three_key_styles_gives_the_hand_merged_image(comfy, stack):
    seed = next(_seeds)
    base = _image(comfy.run(_graph(BASE, seed=seed)))
    result = comfy.run(_graph(BASE, stack, seed=seed))
    stacked = _image(result)
    merged = _image(comfy.run(_graph(MERGED, seed=seed)))
    assert np.abs(stacked - base).max() > 12  # the stack changes the image (3x the tolerance below)...
    # ...as merging it into the bf16 weights does (the merged weights are rounded to bf16: a few levels)
    assert np.abs(stacked - merged).max() <= 4, np.abs(stacked - merged).max()
    report = _report(result)
    assert "LoRAs: stack_a_kohya.safetensors x0.8 (rank 4" in report and "stack_c_lightx2v.safetensors x-1.5" in report


def test_changing_a_strength_or_removing_a_lora_reloads_nothing(comfy, stack):
    seed = next(_seeds)
    first = _image(comfy.run(_graph(BASE, stack, seed=seed)))
    loads = _loads(comfy)
    weaker = _image(comfy.run(_graph(BASE, [*stack[:2], (stack[2][0], 0.5)], seed=seed)))
    removed = _image(comfy.run(_graph(BASE, stack[:2], seed=seed)))
    assert _loads(comfy) == loads
    assert np.abs(weaker - first).max() > 0 and np.abs(removed - weaker).max() > 0


def _bad(tmp, name: str, tensors: dict) -> str:
    save_file(tensors, str(tmp / name))
    return name


@pytest.fixture(scope="module")
def bad_loras(comfy) -> dict[str, str]:
    folder = comfy.base / "models" / "loras"
    layer = "transformer_blocks.0.attn.to_q"
    down, up, alpha = lora_keys("lightx2v", layer)
    write_lora(folder / "bad_another_model.safetensors", "comfy", {layer: (64, 64)}, 2, 2.0, 1)
    other_lightning = folder / "qwenfit_tiny_other-Lightning-8steps.safetensors"
    other_lightning.write_bytes(KOHYA.read_bytes())
    return {
        "another-model": "bad_another_model.safetensors",
        "rank": _bad(folder, "bad_rank.safetensors", {down: torch.zeros(4, 32), up: torch.zeros(32, 2)}),
        "nan-alpha": _bad(
            folder,
            "bad_nan_alpha.safetensors",
            {down: torch.zeros(4, 32), up: torch.zeros(32, 4), alpha: torch.tensor(math.nan)},
        ),
        "second-lightning": other_lightning.name,
    }


BAD = [
    ("another-model", 1.0, ("is 32x32 in this model", "LoRA for another model", "remove it from the stack")),
    ("rank", 1.0, ("ranks do not match", "remove it from the stack")),
    ("nan-alpha", 1.0, ("alpha nan", "remove it from the stack")),
    ("strength-nan", math.nan, ("lora_strength=nan", "use -4 to 4")),
    ("strength-9", 9.0, ("strength",)),  # ComfyUI's own range check answers first
    ("second-lightning", 1.0, ("two Lightning LoRAs", "Keep one of them")),
]


@pytest.mark.parametrize("case, strength, words", BAD, ids=[case for case, *_ in BAD])
def test_a_bad_lora_is_refused_naming_the_fix_and_the_next_prompt_runs(comfy, bad_loras, case, strength, words):
    good = _graph(BASE, [(KOHYA.name, 1.0)], steps=4, seed=next(_seeds))
    assert _image(comfy.run(good)) is not None
    loads = _loads(comfy)
    lora = PEFT.name if case.startswith("strength") else bad_loras[case]
    graph = _graph(BASE, [(KOHYA.name, 1.0), (lora, strength)], steps=4, seed=next(_seeds))
    result = queue(comfy, graph)  # may hold NaN
    assert result.status in ("error", "invalid"), result.status
    text = result.error.get("exception_message") or result.error_text()
    assert all(word in text for word in words), text
    if result.status == "error":
        assert str(result.error.get("exception_type", "")).endswith("QwenFitError"), result.error_text()
    assert _loads(comfy) == loads  # nothing reloaded
    good["3"]["inputs"]["seed"] = next(_seeds)
    assert _image(comfy.run(good)) is not None
    assert _loads(comfy) == loads


def test_lightning_lora_through_the_server_in_both_formats(comfy):
    outputs = {}
    for lora in ("none", KOHYA.name, PEFT.name):
        result = comfy.run(_graph("qwenfit_tiny_edit_2509_fp8_e4m3fn.safetensors", [(lora, 1.0)], steps=4))
        outputs[lora] = _image(result)
        report = _report(result)
        if lora != "none":
            assert "Lightning LoRA" in report and "CFG off" in report and "made for 4 steps" in report
            assert "CFG off (1)" in report
    assert np.array_equal(outputs[KOHYA.name], outputs[PEFT.name])
    assert not np.array_equal(outputs["none"], outputs[KOHYA.name])
