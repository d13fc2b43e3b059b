"""Weights read into host memory in the background after the load: a run that starts before they are all
in waits block by block and gives the image of a fully filled pipeline; dropping the pipeline mid-fill
stops the reads before the memory goes."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image
from tiny_files import LAYOUTS, split_files

import optim.execution.arena_fill as arena_fill
from optim import EditJob, LoadRequest, load_pipeline, run_edit
from optim.execution.host_arena import arena_bytes

IMAGE = Image.new("RGB", (64, 64), (90, 120, 200))
JOB = EditJob(prompt="a lighthouse", steps=2, seed=3, width=64, height=64)


def _slow_reads(monkeypatch, delay: float) -> None:
    read_all = arena_fill.read_all

    def slow(jobs):
        time.sleep(delay)
        return read_all(jobs)

    monkeypatch.setattr(arena_fill, "read_all", slow)


@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[1]], ids=["bf16", "fp8"])
def test_a_run_started_mid_fill_gives_the_image_of_a_filled_pipeline(monkeypatch, layout):
    request = LoadRequest(split_files(layout[0], layout[1], text_encoder=layout[2]))
    filled = load_pipeline(request).wait_until_filled()
    expected = run_edit(filled, [IMAGE], JOB).image
    filled.engine.release()

    _slow_reads(monkeypatch, 0.02)
    loaded = load_pipeline(request)
    assert arena_fill.current_stats().pending > 0  # the run below starts before the weights are all in
    result = run_edit(loaded, [IMAGE], JOB)
    assert torch.equal(result.image, expected)
    # The report says how the load went, the background reads included (all done by the run's end).
    assert "loaded in " in result.record.plan and "in the background: " in result.record.plan
    assert "still filling" not in result.record.plan
    loaded.engine.release()


def test_dropping_a_pipeline_mid_fill_stops_the_reads_and_frees_the_arenas(monkeypatch):
    before = arena_bytes()
    _slow_reads(monkeypatch, 0.05)
    loaded = load_pipeline(LoadRequest(split_files(LAYOUTS[0][0], LAYOUTS[0][1])))
    assert arena_fill.current_stats().pending > 0
    loaded.engine.release()
    # Nothing is read into the freed memory afterwards: every queued fill of it has run or been skipped.
    assert arena_fill.current_stats().pending == 0
    del loaded
    assert arena_bytes() == before
