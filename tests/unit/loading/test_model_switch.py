"""Switching models frees the first completely before the second allocates: no double peak on the host,
also while someone (ComfyUI's output cache) still holds the first pipeline."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_files import LAYOUTS, split_files

import optim.loading.pipeline_cache as pipeline_cache
from optim import EditJob, LoadRequest, PipelineCache, QwenFitError, load_pipeline, run_edit
from optim.execution.host_arena import arena_bytes
from optim.files.file_tensors import holds_no_memory

EDIT, LAYERED = LAYOUTS[0][0], LAYOUTS[4][0]
IMAGE = Image.new("RGB", (64, 64), (200, 40, 90))
JOB = EditJob(prompt="winter", steps=2, seed=1, width=64, height=64)


def _weight_bytes(loaded) -> int:
    """Host bytes the pipeline's modules still own (placeholders own none)."""
    total = 0
    for part in (loaded.pipeline.transformer, loaded.pipeline.text_encoder, loaded.pipeline.vae):
        for tensor in [*part.parameters(), *part.buffers()]:
            if tensor.numel() > 1 and not holds_no_memory(tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def test_edit_layered_edit_frees_each_before_the_next_loads(monkeypatch):
    seen = []
    load = pipeline_cache.load_pipeline

    def watched(request, checkpoint=None):
        # What is still held when the next load starts: the arenas, and the modules of every pipeline so far.
        seen.append((arena_bytes(), [_weight_bytes(p) for p in held]))
        return load(request, checkpoint)

    monkeypatch.setattr(pipeline_cache, "load_pipeline", watched)
    cache, held = PipelineCache(), []  # ``held`` stands for ComfyUI's cache of node outputs
    edit = LoadRequest(split_files(EDIT, "edit-2509"))
    hidden = []  # references to weights that something else (a hook, a cache) might keep
    for request in (edit, LoadRequest(split_files(LAYERED, "layered")), edit):
        held.append(cache.get(request))
        assert arena_bytes() > 0 and _weight_bytes(held[-1]) > 0  # the check can fail: weights were held
        pipe = held[-1].wait_until_filled().pipeline
        hidden.append([pipe.transformer.transformer_blocks[0].attn.to_q.weight, pipe.text_encoder.lm_head.weight])
        assert all(t.untyped_storage().nbytes() > 0 for t in hidden[-1])
    assert cache.loads == 3
    assert seen[0][0] == 0
    for arenas, weights in seen[1:]:
        assert arenas == 0 and all(w == 0 for w in weights), (arenas, weights)
    # Even a weight referenced elsewhere gave its memory back (a streamed block's and a host-resident one's).
    assert all(t.untyped_storage().nbytes() == 0 for t in hidden[0] + hidden[1])
    # The first Edit pipeline, still held, refuses to run instead of computing with no weights.
    with pytest.raises(QwenFitError, match="unloaded when another model was loaded"):
        run_edit(held[0], [IMAGE], JOB)
    image = run_edit(held[-1], [IMAGE], JOB).image
    assert torch.isfinite(image).all()
    cache.clear()
    assert arena_bytes() == 0 and _weight_bytes(held[-1]) == 0


def _within_storage(tensor: torch.Tensor) -> bool:
    """Whether every element of ``tensor`` lies in the bytes its storage owns."""
    if tensor.numel() == 0:
        return True
    extent = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True))
    last = tensor.storage_offset() + extent
    return (last + 1) * tensor.element_size() <= tensor.untyped_storage().nbytes()


@pytest.mark.parametrize(
    ("transformer", "variant", "text_encoder"),
    [LAYOUTS[0][:3], LAYOUTS[1][:3], LAYOUTS[3][:3]],  # bf16; fp8 with fp8 text encoder; 2511 fp8mixed
    ids=lambda value: str(value).removeprefix("qwenfit_tiny_"),
)
def test_modules_of_a_released_pipeline_point_at_no_freed_memory(transformer, variant, text_encoder):
    """The streamed blocks' weights are views of the host arena, which a release frees at once; the modules
    are re-pointed at placeholders, so one that someone kept computes NaN instead of reading freed memory
    (which crashed a benchmark process, and would crash the server)."""
    loaded = load_pipeline(LoadRequest(split_files(transformer, variant, text_encoder))).wait_until_filled()
    pipe = loaded.pipeline
    kept = pipe.transformer.transformer_blocks[0].attn.to_q
    x = torch.ones(1, kept.in_features, dtype=pipe.transformer.dtype)
    loaded.engine.release()
    for part in (pipe.transformer, pipe.text_encoder, pipe.vae):
        outside = [n for n, t in [*part.named_parameters(), *part.named_buffers()] if not _within_storage(t)]
        assert not outside, outside[:5]
    with torch.inference_mode():
        out = kept(x)
    assert torch.isnan(out).all()
