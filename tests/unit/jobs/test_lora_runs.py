"""LoRA stacks at run time on the tiny models (CPU, fp32): three LoRAs in mixed key styles give what
merging them into the weights by hand gives, on bf16 and fp8 storage, streamed or resident, under the
engine or diffusers' whole-model offload; re-weighting or removing one loads nothing and reads nothing."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_files import MODELS, block_layers, layer_shapes, split_files, write_lora

from optim import (
    EditJob,
    LoadRequest,
    LoraChoice,
    LoraStack,
    OffloadSettings,
    PipelineCache,
    PrecisionSettings,
    QwenFitError,
    load_pipeline,
    run_edit,
)
from optim.files.lora import LIGHTNING_SHIFT

FP32 = PrecisionSettings(transformer="fp32", text_encoder="fp32", vae="fp32")
BF16_FILE = "qwenfit_tiny_edit_2511_bf16.safetensors"
FP8_FILE = "qwenfit_tiny_edit_2511_fp8mixed.safetensors"
JOB = EditJob(prompt="snow", steps=2, seed=1, width=64, height=64)
IMAGE = Image.new("RGB", (96, 64), (200, 80, 40))


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> list[tuple[LoraChoice, dict]]:
    """Three LoRAs in three key styles, overlapping on attn.to_q; the lightx2v one also changes the
    modulation layers (precomputed per schedule: a new stack must recompute them)."""
    folder = tmp_path_factory.mktemp("loras")
    shapes = layer_shapes(MODELS / "diffusion_models" / BF16_FILE)
    specs = [
        ("a_kohya.safetensors", "kohya", ("attn.to_q", "img_mlp"), 4, 2.0, 0.7),
        ("b_peft.safetensors", "peft", ("attn.to_q", "add_k_proj", "txt_mlp.net.2"), 2, None, 1.0),
        ("c_lightx2v.safetensors", "lightx2v", ("to_out", "img_mod"), 8, 1.0, -1.5),
    ]
    made = []
    for name, style, parts, rank, alpha, strength in specs:
        factors = write_lora(folder / name, style, block_layers(shapes, *parts), rank, alpha, len(made), size=0.4)
        made.append((LoraChoice(folder / name, strength), factors))
    return made


def _load(transformer: str = BF16_FILE, **offload):
    cache = PipelineCache()
    request = LoadRequest(split_files(transformer, "edit-2511"), precision=FP32, offload=OffloadSettings(**offload))
    return cache, request, cache.get(request)


def _stack(loras) -> LoraStack:
    return LoraStack(tuple(choice for choice, _ in loras))


def _merged_by_hand(transformer: str, loras, folder) -> str:
    """The transformer file with every LoRA added into its weights (fp8 ones expanded first), saved as a
    float32 file next to the others; returns its name (the loader's choice)."""
    tensors = load_file(str(MODELS / "diffusion_models" / transformer))
    for key in [k for k in tensors if k.endswith(".weight_scale")]:  # ComfyUI's scaled fp8: weight * scale
        weight = key[: -len("_scale")]
        data = tensors[weight]
        data = data.view(torch.float8_e4m3fn) if data.dtype == torch.uint8 else data
        tensors[weight] = data.float() * tensors.pop(key).float()
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    for choice, factors in loras:
        for layer, (down, up, scale) in factors.items():
            tensors[f"{layer}.weight"] += (up @ down) * (scale * choice.strength)
    name = f"merged_{transformer}"
    save_file(tensors, str(folder / name))
    return name


@pytest.mark.parametrize("transformer", [BF16_FILE, FP8_FILE], ids=["bf16-file", "fp8-storage"])
def test_three_loras_in_mixed_styles_give_the_hand_merged_image(loras, transformer, tmp_path):
    _, _, loaded = _load(transformer)
    base = run_edit(loaded, [IMAGE], JOB).image
    result = run_edit(loaded.with_loras(_stack(loras)), [IMAGE], JOB)
    assert (
        "LoRAs: a_kohya.safetensors x0.7 (rank 4" in result.report and "c_lightx2v.safetensors x-1.5" in result.report
    )
    merged_file = _merged_by_hand(transformer, loras, tmp_path)
    merged = load_pipeline(LoadRequest(split_files(str(tmp_path / merged_file), "edit-2511"), precision=FP32))
    want = run_edit(merged, [IMAGE], JOB).image
    assert (result.image - base).abs().max() > 0.02  # the LoRAs change the image (10x the tolerance below)...
    # ...as merging them would (float32 sums in another order: the tiny random model amplifies a last-bit
    # difference to 1e-3 at a few pixels, run to run)
    torch.testing.assert_close(result.image, want, rtol=0, atol=2e-3)
    assert torch.equal(run_edit(loaded, [IMAGE], JOB).image, base)  # and leave the weights untouched


def test_re_weighting_or_removing_a_lora_loads_and_reads_nothing(loras):
    cache, request, loaded = _load()
    stack = _stack(loras)
    first = run_edit(loaded.with_loras(stack), [IMAGE], JOB).image
    updates = loaded.engine.loras
    to_q = loaded.pipeline.transformer.get_submodule("transformer_blocks.0.attn.to_q")
    factors = to_q.low_rank[0].down
    weaker = LoraStack((stack.choices[0], stack.choices[1], LoraChoice(stack.choices[2].path, -0.5)))
    clock = time.perf_counter()
    again = cache.get(request).with_loras(weaker)
    weaker_image = run_edit(again, [IMAGE], JOB).image
    assert to_q.low_rank[0].down is factors  # only the scales were rewritten
    assert updates.stack == weaker and not torch.equal(weaker_image, first)
    without = run_edit(cache.get(request).with_loras(LoraStack(stack.choices[:2])), [IMAGE], JOB).image
    assert not torch.equal(without, weaker_image)
    assert time.perf_counter() - clock < 30  # three tiny runs; the real-size figure is the benchmark's
    assert cache.loads == 1


def test_streamed_blocks_apply_the_same_loras_as_resident_ones(loras):
    stack = _stack(loras)
    _, _, resident = _load()
    _, _, streamed = _load(mode="blocks")
    want = run_edit(resident.with_loras(stack), [IMAGE], JOB)
    got = run_edit(streamed.with_loras(stack), [IMAGE], JOB)
    assert "0 of 2 blocks resident" in got.report
    torch.testing.assert_close(got.image, want.image, rtol=0, atol=1e-6)


def test_whole_model_offload_applies_the_loras_on_its_modules(loras):
    stack = _stack(loras)
    _, _, engine = _load()
    _, _, whole = _load(mode="model")
    assert whole.engine is None
    want = run_edit(engine.with_loras(stack), [IMAGE], JOB).image
    torch.testing.assert_close(run_edit(whole.with_loras(stack), [IMAGE], JOB).image, want, rtol=0, atol=1e-4)


def test_a_lightning_lora_anywhere_in_the_stack_sets_its_scheduler_for_that_run(loras, tmp_path):
    lightning = tmp_path / "qwen-Lightning-4steps.safetensors"
    lightning.write_bytes(loras[1][0].path.read_bytes())
    _, _, loaded = _load()
    scheduler = loaded.pipeline.scheduler
    own = dict(scheduler.config)
    view = loaded.with_lora(loras[0][0]).with_lora(LoraChoice(lightning))
    result = run_edit(view, [IMAGE], JOB)
    assert "Lightning LoRA qwen-Lightning-4steps.safetensors" in result.report and "CFG off (1)" in result.report
    assert scheduler.config.base_shift == scheduler.config.max_shift == LIGHTNING_SHIFT
    assert scheduler.config.shift_terminal is None
    run_edit(loaded.with_lora(loras[0][0]), [IMAGE], JOB)
    assert {k: scheduler.config[k] for k in own} == own  # the model's own schedule again
    with pytest.raises(QwenFitError, match="two Lightning LoRAs"):
        view.with_lora(LoraChoice(tmp_path / "other-lightning.safetensors"))


def test_a_bad_lora_is_refused_before_the_run_and_the_next_run_works(tmp_path, loras):
    _, _, loaded = _load()
    wide = tmp_path / "for_a_bigger_model.safetensors"
    write_lora(wide, "comfy", {"transformer_blocks.0.attn.to_q": (64, 64)}, rank=2, alpha=2.0, seed=1)
    with pytest.raises(QwenFitError, match="for_a_bigger_model.safetensors: layer transformer_blocks.0.attn.to_q"):
        loaded.with_lora(LoraChoice(wide))
    assert run_edit(loaded.with_lora(loras[0][0]), [IMAGE], JOB).image.isfinite().all()
