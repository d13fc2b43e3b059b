"""The fastest rung's step cache: its bookkeeping, its extrapolation, and what it skips in a real run of
each variant (2509, 2511 with ``zero_cond_t``, Layered) through the loader."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_files import FOLDER, MODELS

from optim import DiffusersFolder, EditJob, LayeredJob, LoadRequest, load_pipeline, run_edit, run_layered
from optim.execution.step_cache import StepCache
from optim.planning.step_time import cache_schedule
from optim.settings import PrecisionSettings


def test_a_step_is_predicted_only_off_schedule_and_with_two_outputs_known():
    cache = StepCache()
    assert not cache.skips(2, 6, ["prompt"])  # nothing computed yet
    cache.keep("prompt", 1.0, torch.zeros(3))
    assert not cache.skips(2, 6, ["prompt"])  # one output is not a slope
    cache.keep("prompt", 0.8, torch.ones(3))
    assert cache.skips(2, 6, ["prompt"])
    assert not cache.skips(3, 6, ["prompt"])  # on the schedule: computed
    assert not cache.skips(5, 6, ["prompt"])  # the last step is always computed
    assert not cache.skips(2, 6, ["prompt", "negative"])  # every text input needs its own history


def test_extrapolation_is_first_order_in_the_timestep_per_text_input():
    cache = StepCache()
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0])
    for t in (1.0, 0.75):  # an output linear in t is predicted exactly
        cache.keep("prompt", t, a + b * t)
        cache.keep("negative", t, -(a + b * t))
    torch.testing.assert_close(cache.predict("prompt", 0.5), a + b * 0.5)
    torch.testing.assert_close(cache.predict("negative", 0.5), -(a + b * 0.5))
    assert (cache.computed, cache.predicted) == (4, 2)
    cache.keep("prompt", 0.5, a)  # only the last two are kept
    torch.testing.assert_close(cache.predict("prompt", 0.25), a + (a - (a + b * 0.75)) * 1.0)
    cache.clear()
    assert (cache.computed, cache.predicted) == (0, 0) and not cache.skips(2, 6, ["prompt"])


def _block_calls(loaded) -> list[int]:
    calls: list[int] = []
    # The engine runs the blocks' parts itself (not block.forward): count the first block's MLP calls.
    first = loaded.pipeline.transformer.transformer_blocks[0].img_mlp
    first.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("variant", ["edit-2509", "edit-2511", "layered"])
def test_fastest_skips_the_blocks_off_schedule_and_reports_it(variant):
    """Six steps with CFG: the blocks run on steps 0, 1, 3 and 5 only (one batched pass each), the other
    two steps' outputs are extrapolated for both prompts, the run report says so, and the image stays
    close to the fast rung's (same weights, same arithmetic)."""
    folder = DiffusersFolder(MODELS / "diffusers" / FOLDER[variant])
    images = {}
    for speed in ("fast", "fastest"):
        loaded = load_pipeline(LoadRequest(folder, precision=PrecisionSettings(transformer="int8", speed=speed)))
        calls = _block_calls(loaded)
        if variant == "layered":
            job = LayeredJob(layers=2, resolution=640, prompt="a fox", steps=6, seed=1)
            result = run_layered(loaded, Image.new("RGBA", (64, 64), (200, 40, 40, 255)), job)
            images[speed] = result.rgb
        else:
            job = EditJob(prompt="autumn", steps=6, seed=4, width=64, height=64)
            result = run_edit(loaded, [Image.new("RGB", (64, 64), (30, 160, 90))], job)
            images[speed] = result.image
        if speed == "fastest":
            assert len(calls) == len(cache_schedule(6)) == 4
            assert "step cache: 4 of 12 transformer outputs extrapolated" in result.record.plan
            assert "speed fastest: int8 W8A8" in result.record.plan
            assert "benchmark: final latents 5.1e-01 from exact" in result.record.plan  # its deviation, beside it
        else:
            assert len(calls) == 6
    fast, fastest = images["fast"].double(), images["fastest"].double()
    assert torch.isfinite(fastest).all()
    assert 0 < float((fastest - fast).norm() / fast.norm()) < 0.5
