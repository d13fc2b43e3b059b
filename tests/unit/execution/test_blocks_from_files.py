"""Transformer blocks read from the model files at every step (a host short of RAM: a 16 GB machine).

The host plan leaves the first blocks in the files; the streamer reads each one into a ring of staging
buffers ahead of its use. The image must equal the all-in-memory load's exactly (same bytes, same
arithmetic), every file block must really be read at each pass (nothing kept between uses), and a slow
read must not let another block's bytes into a computation.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch
from PIL import Image
from tiny_files import GGUF_FILES, LAYOUTS, split_files

import optim.planning.host_memory as host_memory
from optim import EditJob, LoadRequest, load_pipeline, run_edit
from optim.files.file_tensors import FileFeed, holds_no_memory
from optim.settings import OffloadSettings

IMAGE = Image.new("RGB", (64, 64), (90, 120, 200))
JOB = EditJob(prompt="a lighthouse", steps=2, seed=3, width=64, height=64)
IN_FILES, READ_AHEAD = 1, 3  # the tiny transformers have two blocks: one read from the files, one in memory


def _blocks_in_files(monkeypatch, count: int, read_ahead: int) -> None:
    """Make the loader's host plan leave the first ``count`` blocks in the files (the budget arithmetic is
    tested in tests/unit/planning/test_host_memory_plan.py; here the engine's side of it)."""
    plan_host = host_memory.plan_host

    def short_host(weights, budget):
        assert weights.blocks_can_stay_in_files and weights.blocks > 0
        return replace(plan_host(weights, budget), blocks_in_files=count, read_ahead=read_ahead)

    monkeypatch.setattr(host_memory, "plan_host", short_host)


def _count_reads(monkeypatch) -> list:
    """The layout of every module read from the files by a feed (the transformer's and the others')."""
    reads: list = []
    read_into = FileFeed.read_into

    def counted(self, layout, base, *args, **kwargs):
        reads.append(layout)
        time.sleep(0.005)  # slower than the compute, so the copies really wait on the reads
        return read_into(self, layout, base, *args, **kwargs)

    monkeypatch.setattr(FileFeed, "read_into", counted)
    return reads


@pytest.mark.parametrize(
    ("transformer", "variant", "text_encoder"),
    [LAYOUTS[0][:3], LAYOUTS[1][:3], LAYOUTS[3][:3], (GGUF_FILES[12][0], "edit-2511", LAYOUTS[2][2])],
    ids=["bf16-2509", "fp8-2509", "fp8mixed-2511", "gguf-2511"],
)
def test_blocks_read_from_the_files_give_the_image_of_blocks_in_memory(monkeypatch, transformer, variant, text_encoder):
    _compare(monkeypatch, transformer, variant, text_encoder, "blocks")


def test_blocks_the_gpu_keeps_are_read_once_from_the_files(monkeypatch):
    """offload auto keeps every block on the device here: the file block is read when placed."""
    _compare(monkeypatch, *LAYOUTS[1][:3], "auto")


def _compare(monkeypatch, transformer, variant, text_encoder, mode):
    request = LoadRequest(split_files(transformer, variant, text_encoder), offload=OffloadSettings(mode=mode))
    in_memory = load_pipeline(request).wait_until_filled()
    expected = run_edit(in_memory, [IMAGE], JOB).image
    memory_host_bytes = in_memory.engine.blocks.host_bytes
    in_memory.engine.release()

    _blocks_in_files(monkeypatch, IN_FILES, READ_AHEAD)
    loaded = load_pipeline(request)
    streamer = loaded.engine.blocks
    assert streamer.blocks_in_files == IN_FILES and streamer.reads_files
    block = loaded.pipeline.transformer.transformer_blocks[0]
    assert all(holds_no_memory(p) for name, p in block.named_parameters() if "_mod" not in name)
    assert streamer.host_bytes < memory_host_bytes  # the arena holds only the other blocks
    reads = _count_reads(monkeypatch)
    result = run_edit(loaded, [IMAGE], JOB)
    assert torch.equal(result.image, expected)
    file_layouts = [streamer._layouts[b] for b in range(IN_FILES)]
    streamed_in_files = [b for b in loaded.engine.plan.streamed_blocks if b < IN_FILES]
    # Each streamed file block is read at every pass (two steps), none is kept between uses.
    for block in streamed_in_files:
        assert sum(1 for layout in reads if layout is file_layouts[block]) >= 2
    if mode == "blocks":
        assert len(streamed_in_files) == IN_FILES
    assert f"transformer blocks 0-{IN_FILES - 1}: read from the model files" in result.record.plan
    # A second run reads them again and still gives the same image.
    assert torch.equal(run_edit(loaded, [IMAGE], JOB).image, expected)
    loaded.engine.release()


def test_every_block_in_the_files_with_a_minimal_host_budget():
    transformer, variant, text_encoder = LAYOUTS[1][:3]
    source = split_files(transformer, variant, text_encoder)
    expected = run_edit(load_pipeline(LoadRequest(source)), [IMAGE], JOB).image
    request = LoadRequest(source, offload=OffloadSettings(mode="blocks", host_budget="minimal"))
    loaded = load_pipeline(request)
    blocks = len(loaded.pipeline.transformer.transformer_blocks)
    assert loaded.host.blocks_in_files == blocks and loaded.engine.blocks.host_bytes == 0
    assert torch.equal(run_edit(loaded, [IMAGE], JOB).image, expected)
    loaded.engine.release()
