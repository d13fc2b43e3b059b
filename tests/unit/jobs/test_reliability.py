"""Out-of-memory recovery and cancellation at every phase, on the tiny models through the core.

Out-of-memory is injected where a real one surfaces (a CUDA allocation inside the transformer's
forward raises ``torch.OutOfMemoryError``); the GPU benchmark forces a real one (bench/reliability.py).
Cancellation raises from the checkpoint ComfyUI's Cancel raises from (nodes/comfy_glue.py).
"""

from __future__ import annotations

import gc

import pytest
import torch
from PIL import Image
from tiny_files import FOLDER, MODELS

from optim import DiffusersFolder, EditJob, LayeredJob, LoadRequest, load_pipeline, run_edit, run_layered
from optim.errors import QwenFitError

IMAGE = Image.new("RGB", (96, 64), (200, 80, 40))
JOB = EditJob(prompt="snow on the roof", steps=2, seed=5, width=64, height=64)


class Cancelled(Exception):
    """Stands for ComfyUI's InterruptProcessingException."""


def load(name: str = "edit-2509"):
    return load_pipeline(LoadRequest(DiffusersFolder(MODELS / "diffusers" / FOLDER[name])))


PHASES = ("encode", "denoise", "decode")


def other_job(phase: str) -> EditJob:
    """A prompt the pipeline has not seen yet, one per phase, so the cancelled run encodes afresh."""
    return EditJob(prompt=f"a red door ({phase})", steps=3, seed=9, width=64, height=64)


@pytest.fixture(scope="module")
def never_cancelled() -> dict[str, torch.Tensor]:
    """What each phase's job gives on a pipeline that was never cancelled."""
    fresh = load()
    try:
        return {phase: run_edit(fresh, [IMAGE], other_job(phase)).image for phase in PHASES}
    finally:
        fresh.engine.release()


def _edit_pipeline():
    loaded = load()
    reference = run_edit(loaded, [IMAGE], JOB).image
    yield loaded, reference
    loaded.engine.release()


# Separate pipelines: out-of-memory leaves its engine on a leaner plan on purpose.
oom_edit = pytest.fixture(scope="module")(_edit_pipeline)
edit = pytest.fixture(scope="module")(_edit_pipeline)


def out_of_memory_on(transformer: torch.nn.Module, times: int):
    """Make the next ``times`` transformer calls fail as a CUDA allocation does."""
    left = [times]

    def fail(_module, _args):
        if left[0] > 0:
            left[0] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

    return transformer.register_forward_pre_hook(fail)


def test_out_of_memory_is_retried_once_leaner_and_completes(oom_edit) -> None:
    loaded, reference = oom_edit
    hook = out_of_memory_on(loaded.pipeline.transformer, 1)
    try:
        result = run_edit(loaded, [IMAGE], JOB)
    finally:
        hook.remove()
    assert "out of GPU memory" in result.report and "the retry succeeded" in result.report
    assert "VAE tiling on" in result.report
    # A leaner plan (text encoder streamed, VAE tiling on) computes the same image up to rounding.
    assert result.image.shape == reference.shape and (result.image - reference).abs().max() < 1e-2
    assert not loaded.engine.blocks._active  # nothing left bound to a streaming slot


def test_out_of_memory_twice_says_what_was_tried_and_the_next_run_works(oom_edit) -> None:
    loaded, reference = oom_edit
    hook = out_of_memory_on(loaded.pipeline.transformer, 2)
    try:
        with pytest.raises(QwenFitError, match="out of GPU memory twice.*re-planned one step leaner.*VRAM budget"):
            run_edit(loaded, [IMAGE], JOB)
    finally:
        hook.remove()
    # The engine keeps its leaner plan; on the CPU that moves pixels by rounding at most.
    after = run_edit(loaded, [IMAGE], JOB).image
    assert after.shape == reference.shape and (after - reference).abs().max() < 1e-2


@pytest.mark.parametrize("phase", PHASES)
def test_cancel_at_each_phase_leaves_no_half_state(edit, never_cancelled, phase: str) -> None:
    loaded, reference = edit
    seen = []

    def checkpoint(name: str) -> None:
        seen.append(name)
        if name == phase:
            raise Cancelled(name)

    with pytest.raises(Cancelled):
        run_edit(loaded, [IMAGE], other_job(phase), checkpoint=checkpoint)
    assert seen[-1] == phase
    engine = loaded.engine
    assert not engine.blocks._active and not engine.transformer.pairing._pairs
    # The next run is as if the cancelled one never happened; the cancelled job also runs normally.
    assert torch.equal(run_edit(loaded, [IMAGE], JOB).image, reference)
    assert torch.equal(run_edit(loaded, [IMAGE], other_job(phase)).image, never_cancelled[phase])


class CancelledSince2026(BaseException):
    """Stands for the newest ComfyUI's interrupt, a BaseException subclass: ``except Exception`` misses it."""


@pytest.mark.parametrize("cancel", [Cancelled, CancelledSince2026], ids=["Exception", "BaseException"])
def test_cancel_while_loading_releases_the_partial_model_and_the_next_load_works(cancel) -> None:
    from diffusers import QwenImageTransformer2DModel

    def transformers_alive() -> int:
        gc.collect()
        return sum(isinstance(o, QwenImageTransformer2DModel) for o in gc.get_objects())

    before = transformers_alive()  # other tests' pipelines may be alive; the cancelled one must not be
    calls = []

    def checkpoint(name: str) -> None:
        calls.append(name)
        if len(calls) == 2:  # after the transformer, before the text encoder
            raise cancel(name)

    request = LoadRequest(DiffusersFolder(MODELS / "diffusers" / FOLDER["layered"]))
    with pytest.raises(cancel) as raised:  # re-raised as it is, not reported as a broken file
        load_pipeline(request, checkpoint)
    # Memory is back while the error is still held (ComfyUI keeps it for its report).
    assert raised.value is not None and transformers_alive() == before
    assert calls == ["load", "load"]
    loaded = load_pipeline(request, lambda _phase: None)
    try:
        result = run_layered(
            loaded, IMAGE.convert("RGBA"), LayeredJob(prompt="a house", layers=2, resolution=640, steps=2)
        )
    finally:
        loaded.engine.release()
    assert result.rgb.shape[0] == 2 and torch.isfinite(result.rgb).all()
