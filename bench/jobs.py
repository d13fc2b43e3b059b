"""The two benchmark jobs and running one through a prepared pipeline.

- ``edit``: Edit-2509, 1024x1024, one 1024x1024 reference, "make the sky purple", true CFG 4.0.
- ``layered``: Layered, resolution 640, 4 layers, an RGBA 640x640 input, "a cat on a sofa" (a prompt
  is given so the pipeline does not auto-caption with the 7B model), true CFG 4.0.

Both use the negative prompt " " (CFG runs only when a negative prompt is given) and a CPU
``torch.Generator`` with the same seed for every configuration, so the initial noise is identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from optim.qwen.variants import Variant

from .measure import Measurement, PhaseMeter

DEFAULT_STEPS = 8


@dataclass(frozen=True)
class Job:
    """One generation to measure. ``size`` is the output side (Edit) or the Layered resolution."""

    name: str
    variant: Variant
    prompt: str
    size: int
    steps: int = DEFAULT_STEPS
    seed: int = 0
    negative_prompt: str = " "
    true_cfg_scale: float = 4.0
    layers: int | None = None  # Layered only

    def describe(self) -> str:
        layers = f", {self.layers} layers" if self.layers else ""
        return f"{self.variant.value} {self.size}px{layers}, {self.steps} steps, true CFG {self.true_cfg_scale}"


@dataclass
class JobResult:
    """What one run gave: the measurement and the decoded images (PIL)."""

    job: Job
    measurement: Measurement
    images: list[Image.Image] = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """Sizes, modes and mean pixel values of the outputs (a flat gray image hints at dead weights)."""
        return {
            "images": len(self.images),
            "sizes": sorted({im.size for im in self.images}),
            "modes": sorted({im.mode for im in self.images}),
            "mean_pixel": [round(float(np.asarray(im, dtype=np.float32).mean()), 2) for im in self.images],
        }


def synthetic_image(size: int, mode: str = "RGB") -> Image.Image:
    """A deterministic test picture: a sky gradient over ground, a sun, and (RGBA) a round opaque subject
    on a half-transparent background."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    sky = y < 0.6
    rgb = np.empty((size, size, 3), dtype=np.float32)
    rgb[..., 0] = np.where(sky, 0.35 + 0.3 * y, 0.30 + 0.2 * x)
    rgb[..., 1] = np.where(sky, 0.55 + 0.3 * y, 0.45 + 0.1 * np.sin(12 * x))
    rgb[..., 2] = np.where(sky, 0.95 - 0.2 * y, 0.20)
    sun = (x - 0.75) ** 2 + (y - 0.2) ** 2 < 0.08**2
    rgb[sun] = (1.0, 0.9, 0.5)
    pixels = (rgb * 255).round().astype(np.uint8)
    if mode == "RGB":
        return Image.fromarray(pixels, "RGB")
    subject = (x - 0.5) ** 2 + (y - 0.65) ** 2 < 0.25**2
    alpha = np.where(subject, 255, 128).astype(np.uint8)
    return Image.fromarray(np.dstack([pixels, alpha]), "RGBA")


def edit_job(steps: int = DEFAULT_STEPS, seed: int = 0) -> Job:
    return Job("edit", Variant.EDIT_2509, "make the sky purple", size=1024, steps=steps, seed=seed)


def layered_job(steps: int = DEFAULT_STEPS, seed: int = 0) -> Job:
    return Job("layered", Variant.LAYERED, "a cat on a sofa", size=640, steps=steps, seed=seed, layers=4)


def lightning_edit_job(steps: int = DEFAULT_STEPS, seed: int = 0) -> Job:
    """A Lightning-style Edit run: CFG off (true CFG scale 1), as the distilled 4/8-step LoRAs run."""
    return Job("edit-lightning", Variant.EDIT_2509, "make the sky purple", size=1024, steps=steps, seed=seed,
               true_cfg_scale=1.0)  # fmt: skip


JOBS: dict[str, Callable[..., Job]] = {"edit": edit_job, "layered": layered_job, "edit-lightning": lightning_edit_job}


def _arguments(job: Job, meter: PhaseMeter) -> dict[str, Any]:
    common = dict(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        true_cfg_scale=job.true_cfg_scale,
        num_inference_steps=job.steps,
        generator=torch.Generator("cpu").manual_seed(job.seed),
        callback_on_step_end=meter.on_step_end,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    if job.variant is Variant.LAYERED:
        image = synthetic_image(job.size, "RGBA")
        return dict(common, image=image, layers=job.layers, resolution=job.size)
    image = synthetic_image(job.size, "RGB")
    return dict(common, image=[image], height=job.size, width=job.size, output_type="pil")


def run_job(pipeline: Any, job: Job, meter: PhaseMeter) -> JobResult:
    """Run ``job`` once through ``pipeline`` under ``torch.inference_mode()``, measured by ``meter``."""
    arguments = _arguments(job, meter)  # the input image is made before the clock starts
    with torch.inference_mode(), meter.measuring(pipeline.transformer):
        output = pipeline(**arguments)
    images = output.images
    # Layered returns one list of layers per batch item; Edit a flat list.
    flat = [im for item in images for im in (item if isinstance(item, list) else [item])]
    return JobResult(job, meter.result, flat)
