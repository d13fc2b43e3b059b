"""A reference's VAE encoding is reused by the next runs on the same image: exactly, and never across images,
VAE settings or a GPU hand-back."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_files import LAYOUTS, split_files

from optim import EditJob, LoadRequest, load_pipeline, run_edit

BLUE = Image.new("RGB", (64, 64), (90, 120, 200))
RED = Image.new("RGB", (64, 64), (200, 60, 40))


@pytest.fixture(scope="module")
def loaded():
    return load_pipeline(LoadRequest(split_files(*LAYOUTS[0][:2], text_encoder=LAYOUTS[0][2])))


def _edit(loaded, image: Image.Image, seed: int, prompt: str = "a lighthouse"):
    return run_edit(loaded, [image], EditJob(prompt=prompt, steps=2, seed=seed, width=64, height=64))


def _reused(result) -> bool:
    return "reference latents: 1 reused" in result.report


def test_a_new_seed_reuses_the_encoding_and_the_image_is_exactly_the_uncached_one(loaded):
    references = loaded.engine.references
    loaded.engine.release_gpu()  # whatever an earlier test left: this one starts without encodings
    first = _edit(loaded, BLUE, seed=1)
    assert not _reused(first) and references.encoded_this_run == 1
    other_seed = _edit(loaded, BLUE, seed=2, prompt="a lighthouse at night")
    assert _reused(other_seed) and references.encoded_this_run == 0
    again = _edit(loaded, BLUE, seed=1)
    assert _reused(again)
    assert torch.equal(again.image, first.image)  # the reused encoding is the encoding
    assert not torch.equal(other_seed.image, first.image)


def test_another_image_or_vae_tiling_is_encoded_afresh(loaded):
    _edit(loaded, BLUE, seed=3)
    red = _edit(loaded, RED, seed=3)
    assert not _reused(red) and loaded.engine.references.encoded_this_run == 1
    vae = loaded.pipeline.vae
    cache = loaded.engine.references
    pixels = torch.rand(1, 3, 1, 64, 64)
    vae.disable_tiling()
    cache.begin_run()
    untiled = vae.encode(pixels)
    vae.enable_tiling()
    try:
        tiled = vae.encode(pixels)
    finally:
        vae.disable_tiling()
    assert tiled is not untiled and cache.encoded_this_run == 2
    assert vae.encode(pixels) is untiled and cache.reused_this_run == 1


def test_giving_the_gpu_back_forgets_the_encodings(loaded):
    _edit(loaded, BLUE, seed=4)
    loaded.engine.release_gpu()
    after = _edit(loaded, BLUE, seed=5)
    assert not _reused(after) and loaded.engine.references.encoded_this_run == 1


def test_release_gives_the_vae_its_own_encode_back(loaded):
    vae = loaded.pipeline.vae
    assert "encode" in vae.__dict__
    loaded.engine.release()  # what the pipeline cache does when another model is loaded
    assert "encode" not in vae.__dict__ and not loaded.engine.references._entries
