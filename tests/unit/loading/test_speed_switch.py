"""Changing the speed rung reuses the loaded weights when they are stored as the new rung needs them (an
fp8 or int8 file: exact, fast and fastest all multiply the same stored bytes) and loads again otherwise."""

from __future__ import annotations

import torch
from PIL import Image
from tiny_files import LAYOUTS, split_files

from optim import EditJob, LoadRequest, PipelineCache, PrecisionSettings, run_edit

EDIT_BF16, EDIT_FP8 = LAYOUTS[0][0], LAYOUTS[1][0]
IMAGE = Image.new("RGB", (64, 64), (30, 160, 90))
JOB = EditJob(prompt="autumn", steps=3, seed=4, width=64, height=64)


def _run(cache: PipelineCache, source, speed: str) -> torch.Tensor:
    loaded = cache.get(LoadRequest(source, precision=PrecisionSettings(speed=speed)))
    result = run_edit(loaded, [IMAGE], JOB)
    assert f"speed {speed}:" in result.record.plan
    return result.image


def test_an_fp8_file_switches_rungs_in_place_with_the_images_of_fresh_loads():
    source = split_files(EDIT_FP8, "edit-2509")
    fresh = {}
    for speed in ("exact", "fast", "fastest"):
        alone = PipelineCache()
        fresh[speed] = _run(alone, source, speed)
        alone.clear()
    cache = PipelineCache()
    for speed in ("exact", "fastest", "fast", "exact"):
        assert torch.equal(_run(cache, source, speed), fresh[speed]), speed
    assert cache.loads == 1  # three switches, no second load
    assert not torch.equal(fresh["exact"], fresh["fast"])
    cache.clear()


def test_a_bf16_file_loads_again_for_fast_its_blocks_are_quantized_on_load():
    source = split_files(EDIT_BF16, "edit-2509")
    cache = PipelineCache()
    _run(cache, source, "exact")
    _run(cache, source, "fast")
    assert cache.loads == 2
    _run(cache, source, "fastest")  # the same 8-bit blocks as fast: switched in place
    assert cache.loads == 2
    cache.clear()
