"""Decomposing an image into RGBA layers with Qwen-Image-Layered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..errors import QwenFitError
from ..execution.loaded_pipeline import LoadedPipeline
from ..monitoring.run_record import PhaseTracker, RunRecord
from ..qwen.job_limits import MAX_LAYERS, MIN_LAYERS, RESOLUTIONS
from ..qwen.job_shape import JobShape
from ..qwen.variants import Variant
from .images import numpy_to_tensor
from .runs import (
    Checkpoint,
    StepCallback,
    Stopwatch,
    cfg_for,
    check_finite,
    check_steps,
    generator_for,
    run_with_recovery,
    step_callback,
)


@dataclass(frozen=True)
class LayeredJob:
    """One decomposition request. An empty prompt makes the model caption the image itself."""

    layers: int = 4
    resolution: int = 640
    prompt: str = ""
    negative_prompt: str = " "
    true_cfg_scale: float = 4.0
    steps: int = 50
    seed: int = 0


@dataclass(frozen=True)
class LayeredResult:
    rgb: torch.Tensor  # [N, H, W, 3]
    alpha: torch.Tensor  # [N, H, W], 1 = opaque
    seconds: float
    report: str
    record: RunRecord


def run_layered(
    loaded: LoadedPipeline,
    image: Image.Image,
    job: LayeredJob,
    on_step: StepCallback | None = None,
    checkpoint: Checkpoint | None = None,
) -> LayeredResult:
    """Split an RGBA ``image`` into ``job.layers`` RGBA layers, in the model's order.

    ``on_step`` and ``checkpoint`` as for :func:`optim.jobs.edit.run_edit`; out-of-memory is retried once leaner."""
    if loaded.variant is not Variant.LAYERED:
        raise QwenFitError(
            f"'{loaded.name}' is {loaded.identity.describe()}; LayeredDecompose needs Qwen-Image-Layered. "
            "Load a Layered model, or use InstructEdit with this one."
        )
    if not MIN_LAYERS <= job.layers <= MAX_LAYERS:
        raise QwenFitError(f"layers={job.layers} is out of range; use {MIN_LAYERS} to {MAX_LAYERS}.")
    if job.resolution not in RESOLUTIONS:
        raise QwenFitError(f"resolution={job.resolution} is not supported; Qwen-Image-Layered takes 640 or 1024.")
    check_steps(job.steps, loaded)
    true_cfg_scale, negative_prompt, lightning_note = cfg_for(loaded, job.true_cfg_scale, job.negative_prompt)
    clock = Stopwatch()
    cfg_on = true_cfg_scale > 1 and negative_prompt is not None
    shape = JobShape(
        "layered",
        job.resolution,
        job.resolution,
        references=0,
        layers=job.layers,
        cfg=cfg_on,
        steps=job.steps,
        caption=not job.prompt,
    )

    def call(tracker: PhaseTracker) -> Any:
        return loaded.pipeline(
            image=image.convert("RGBA"),
            prompt=job.prompt or None,
            negative_prompt=negative_prompt,
            true_cfg_scale=true_cfg_scale,
            layers=job.layers,
            resolution=job.resolution,
            num_inference_steps=job.steps,
            generator=generator_for(job.seed),
            output_type="np",
            callback_on_step_end=step_callback(job.steps, on_step, tracker),
        )

    output, record, recovery = run_with_recovery(loaded, shape, call, checkpoint)
    # diffusers returns one group per batch item; we always run one image.
    rgba = numpy_to_tensor(output.images[0])[: job.layers]
    check_finite(rgba, loaded)
    caption = "prompt given" if job.prompt else "auto-captioned by the 7B text encoder"
    report = (
        f"{loaded.name}: {rgba.shape[0]} layers at {rgba.shape[2]}x{rgba.shape[1]} ({caption}), "
        f"{job.steps} steps, seed {job.seed}, {clock.seconds:.1f} s\n"
        + (f"{lightning_note}\n" if lightning_note else "")
        + (f"{recovery}\n" if recovery else "")
        + f"{record.describe()}\n"
        + record.plan
    )
    return LayeredResult(
        rgb=rgba[..., :3].contiguous(),
        alpha=rgba[..., 3].contiguous(),
        seconds=clock.seconds,
        report=report,
        record=record,
    )
