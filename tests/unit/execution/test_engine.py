"""The engine's pieces against diffusers' own forward, on the CPU with small random models (fp32).

Streaming and precomputed modulation do the same arithmetic as diffusers: equality is exact.
Batched CFG multiplies more rows per matmul, which may round the last bit differently: it must
agree within float32 rounding.
"""

from __future__ import annotations

import pytest
import torch
from tiny_files import FOLDER, MODELS
from tiny_transformer import CPU, VARIANTS, inputs, reference, seven_block_transformer

from optim.execution.block_streamer import BlockStreamer
from optim.execution.cfg_pairing import TextInput
from optim.execution.modulation import ModulationTable
from optim.execution.transformer_engine import TransformerEngine
from optim.qwen.anatomy import is_modulation
from optim.qwen.variants import Variant


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize(("resident", "slots"), [((), 2), ((0, 3), 2), ((1,), 3)])
@pytest.mark.parametrize("cfg", ["interleaved", "batched"])
def test_streaming_precompute_and_cfg_match_two_calls(variant: Variant, resident: tuple, slots: int, cfg: str) -> None:
    transformer = seven_block_transformer(variant)
    hidden, prompt, negative, shapes, extra = inputs(transformer, variant)
    timesteps = [torch.tensor([0.9]), torch.tensor([0.4])]
    with torch.inference_mode():
        expected = [
            (
                reference(transformer, hidden, prompt, t, shapes, extra),
                reference(transformer, hidden, negative, t, shapes, extra),
            )
            for t in timesteps
        ]
        modulation = ModulationTable(transformer, CPU, pin=False)
        streamer = BlockStreamer(transformer.transformer_blocks, CPU, skip=is_modulation, pin=False)
        streamer.configure(resident, slots)
        engine = TransformerEngine(transformer, CPU, streamer, modulation, cfg=cfg)
        engine.begin_run()
        # Two passes per timestep and two timesteps: the ring wraps around between forwards.
        for t, (want_prompt, want_negative) in zip(timesteps, expected, strict=True):
            got = engine.run(hidden, [TextInput(prompt, None), TextInput(negative, None)], t, shapes, extra)
            if cfg == "interleaved":  # the same shapes as single calls: the same numbers
                assert torch.equal(got[0], want_prompt) and torch.equal(got[1], want_negative)
            else:  # larger matmuls may round the last bit differently
                torch.testing.assert_close(got[0], want_prompt, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(got[1], want_negative, rtol=1e-5, atol=1e-5)
            alone = engine.run(hidden, [TextInput(negative, None)], t, shapes, extra)
            assert torch.equal(alone[0], want_negative)
        engine.end_run()
    assert streamer.streamed == tuple(b for b in range(7) if b not in resident)
    # The modulation weights left the blocks: streamed blocks carry only attention and MLP weights.
    assert modulation.host_bytes > 0


def test_engine_installs_as_forward_and_pairs_calls() -> None:
    variant = Variant.EDIT_2509
    transformer = seven_block_transformer(variant)
    hidden, prompt, negative, shapes, _ = inputs(transformer, variant)
    t = torch.tensor([0.5])
    with torch.inference_mode():
        want = (
            reference(transformer, hidden, prompt, t, shapes, None),
            reference(transformer, hidden, negative, t, shapes, None),
        )
        engine = TransformerEngine(transformer, CPU)
        engine.install()
        engine.pairing.pair(TextInput(prompt, None), TextInput(negative, None))
        first = reference(transformer, hidden, prompt, t, shapes, None)
        second = reference(transformer, hidden, negative, t, shapes, None)
        engine.uninstall()
    torch.testing.assert_close(first, want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, want[1], rtol=1e-5, atol=1e-5)
    assert engine.pairing.batched_calls == 1  # the second call was served from the shared pass


def test_new_seed_reuses_prompt_embeddings_and_batches_cfg() -> None:
    from PIL import Image

    from optim import DiffusersFolder, EditJob, LoadRequest, load_pipeline, run_edit

    loaded = load_pipeline(LoadRequest(DiffusersFolder(MODELS / "diffusers" / FOLDER["edit-2509"])))
    image = Image.new("RGB", (96, 64), (200, 80, 40))
    first = run_edit(loaded, [image], EditJob(prompt="snow", steps=2, seed=1, width=64, height=64))
    engine = loaded.engine
    assert (engine.prompts.misses, engine.prompts.hits) == (2, 0)  # prompt and negative prompt
    assert engine.transformer.pairing.batched_calls == 2  # one batched pass per step
    second = run_edit(loaded, [image], EditJob(prompt="snow", steps=2, seed=2, width=64, height=64))
    assert (engine.prompts.misses, engine.prompts.hits) == (2, 2)  # nothing re-encoded
    assert not torch.equal(first.image, second.image)


def test_interleaved_cfg_through_the_loader_matches_two_calls() -> None:
    from PIL import Image

    from optim import DiffusersFolder, EditJob, LoadRequest, OffloadSettings, load_pipeline, run_edit

    folder = DiffusersFolder(MODELS / "diffusers" / FOLDER["edit-2511"])
    image = Image.new("RGB", (96, 64), (30, 160, 90))
    job = EditJob(prompt="autumn", steps=2, seed=4, width=64, height=64)
    results = {}
    for cfg in ("interleaved", "two_calls"):
        loaded = load_pipeline(LoadRequest(folder, offload=OffloadSettings(cfg=cfg)))
        assert loaded.engine.transformer.cfg == cfg
        results[cfg] = run_edit(loaded, [image], job).image
        assert f"CFG: {cfg}" in loaded.engine.plan.describe()
    assert torch.equal(results["interleaved"], results["two_calls"])


def test_several_gpu_plans_run_through_the_loader_like_one_gpu() -> None:
    """The engine places what a sequence-parallel or CFG-parallel plan says (a second streamer with its own
    resident blocks and ring) and gives one GPU's image: the CPU stands in for both GPUs. Sequence
    parallelism (CFG off) within fp32 rounding of one GPU; CFG-parallel (each sample alone, as interleaved CFG
    computes it) bit for bit. Afterwards the second streamer is gone and its GPU memory with it."""
    from dataclasses import replace

    from PIL import Image

    from optim import DiffusersFolder, EditJob, LoadRequest, OffloadSettings, load_pipeline, run_edit
    from optim.planning.plan import CFG_PARALLEL, SEQUENCE_PARALLEL

    folder = DiffusersFolder(MODELS / "diffusers" / FOLDER["edit-2511"])
    image = Image.new("RGB", (96, 64), (30, 160, 90))
    loaded = load_pipeline(LoadRequest(folder, offload=OffloadSettings(cfg="interleaved")))
    engine = loaded.engine
    blocks = engine.sizes.blocks
    heads = loaded.pipeline.transformer.config.num_attention_heads
    one_gpu = engine.plan_for
    several = {
        SEQUENCE_PARALLEL: dict(head_shares=(heads - heads // 2, heads // 2), cfg="off"),
        CFG_PARALLEL: dict(replica_device="cpu", cfg=CFG_PARALLEL),
    }
    for strategy, scale in ((SEQUENCE_PARALLEL, 1.0), (CFG_PARALLEL, 4.0)):
        job = EditJob(prompt="autumn", steps=2, seed=4, width=64, height=64, true_cfg_scale=scale)
        engine.plan_for = one_gpu
        want = run_edit(loaded, [image], job).image

        def plan_for(*args, strategy=strategy, **kwargs):
            plan = one_gpu(*args, **kwargs)
            return replace(
                plan, strategy=strategy, devices=("cpu", "cpu"), resident_blocks=(0,),
                streamed_blocks=tuple(range(1, blocks)), slots=2, device_resident=(1, 0), **several[strategy],
            )  # fmt: skip

        engine.plan_for = plan_for
        got = run_edit(loaded, [image], job).image
        (second,) = engine.other_blocks.values()
        assert second.streamed == tuple(range(blocks)) and engine.blocks.streamed == tuple(range(1, blocks))
        if strategy == SEQUENCE_PARALLEL:
            assert engine.transformer.ranks == (second,)
            torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
        else:
            assert engine.transformer.replica is second
            assert torch.equal(got, want)
    engine.plan_for = one_gpu
    run_edit(loaded, [image], job)
    assert engine.other_blocks == {} and engine.transformer.replica is None
