"""Instruction editing with Qwen-Image-Edit-2509/2511 (diffusers' Edit-Plus pipeline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..errors import QwenFitError
from ..execution.loaded_pipeline import LoadedPipeline
from ..monitoring.run_record import PhaseTracker, RunRecord
from ..qwen.job_limits import MAX_REFERENCES, MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, edit_output_size
from ..qwen.job_shape import JobShape
from .crop_and_stitch import CropPlan, MaskedPicture, describe_crop, plan_crop, stitch
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
class EditJob:
    """One edit request. width/height 0 means about 1 megapixel at the first reference's aspect."""

    prompt: str
    negative_prompt: str = " "
    true_cfg_scale: float = 4.0
    steps: int = 40
    seed: int = 0
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class EditResult:
    image: torch.Tensor  # [1, H, W, 3] float in 0..1
    seconds: float
    report: str
    record: RunRecord


def _check_size(job: EditJob) -> None:
    if (job.width == 0) != (job.height == 0):
        raise QwenFitError("set both width and height, or both to 0 for the automatic ~1 megapixel size.")
    for side, value in (("width", job.width), ("height", job.height)):
        if value and (value % SIZE_MULTIPLE or not MIN_SIZE <= value <= MAX_SIZE):
            raise QwenFitError(
                f"{side}={value} is not usable: use a multiple of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}, "
                "or 0 for automatic."
            )


def output_size(first_reference: Image.Image, job: EditJob) -> tuple[int, int]:
    """(width, height): the job's, or about 1 megapixel at the first reference's aspect ratio."""
    return edit_output_size(job.width, job.height, first_reference.width / first_reference.height)


def describe_resizes(references: list[Image.Image]) -> str:
    """How the pipeline resizes each reference: to ~1 MP for the VAE and ~384x384 for the vision encoder."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
        CONDITION_IMAGE_SIZE,
        VAE_IMAGE_SIZE,
        calculate_dimensions,
    )

    lines = []
    for i, ref in enumerate(references, start=1):
        aspect = ref.width / ref.height
        vae_w, vae_h = calculate_dimensions(VAE_IMAGE_SIZE, aspect)
        cond_w, cond_h = calculate_dimensions(CONDITION_IMAGE_SIZE, aspect)
        lines.append(f"  reference {i}: {ref.width}x{ref.height} -> {vae_w}x{vae_h} (VAE), {cond_w}x{cond_h} (vision)")
    return "\n".join(lines)


def _crop_for(masked: MaskedPicture, references: list[Image.Image], job: EditJob) -> CropPlan:
    picture = masked.picture
    if picture.ndim != 3 or (picture.shape[1], picture.shape[0]) != references[0].size:
        raise QwenFitError(
            f"the masked picture ({list(picture.shape)}) is not reference 1 ({references[0].size}); "
            "pass reference 1's own IMAGE values."
        )
    aspect = job.width / job.height if job.width else None
    return plan_crop(masked.mask, references[0].width, references[0].height, masked.settings, aspect)


def run_edit(
    loaded: LoadedPipeline,
    references: list[Image.Image],
    job: EditJob,
    on_step: StepCallback | None = None,
    checkpoint: Checkpoint | None = None,
    masked: MaskedPicture | None = None,
) -> EditResult:
    """Edit ``references`` (1 to 3 RGB images) as ``job.prompt`` says; returns one image.

    ``on_step`` hears every denoising step and ``checkpoint`` every phase start; either may raise to
    cancel. Out of GPU memory, the run is re-planned one step leaner and tried once more.

    With ``masked`` (reference 1's IMAGE values and a MASK, mode crop_and_stitch) only a crop around the
    mask is edited, at the job's size (0: ~1 MP at the crop's aspect), and pasted back feathered: the
    result has the picture's size and its exact values wherever the blend weight is 0."""
    if not loaded.variant.is_edit:
        raise QwenFitError(
            f"'{loaded.name}' is a {loaded.variant.value} model; InstructEdit needs Qwen-Image-Edit-2509/2511 or FireRed-Image-Edit. "
            "Load an Edit model, or use LayeredDecompose with this one."
        )
    if not 1 <= len(references) <= MAX_REFERENCES:
        raise QwenFitError(f"InstructEdit takes 1 to {MAX_REFERENCES} reference images, got {len(references)}.")
    if not job.prompt.strip():
        raise QwenFitError("the edit prompt is empty; say what to change.")
    check_steps(job.steps, loaded)
    _check_size(job)
    crop = None
    mask_note = ""
    if masked is not None and masked.settings.mode == "off":
        mask_note = "mask connected but mask_mode is off: the whole picture was edited\n"
    elif masked is not None:
        crop = _crop_for(masked, references, job)
        box = crop.crop
        references = [references[0].crop((box.left, box.top, box.right, box.bottom)), *references[1:]]
    width, height = output_size(references[0], job)
    true_cfg_scale, negative_prompt, lightning_note = cfg_for(loaded, job.true_cfg_scale, job.negative_prompt)
    clock = Stopwatch()
    cfg_on = true_cfg_scale > 1 and negative_prompt is not None
    shape = JobShape("edit", width, height, references=len(references), cfg=cfg_on, steps=job.steps)

    def call(tracker: PhaseTracker) -> Any:
        return loaded.pipeline(
            image=references,
            prompt=job.prompt,
            negative_prompt=negative_prompt,
            true_cfg_scale=true_cfg_scale,
            num_inference_steps=job.steps,
            width=width,
            height=height,
            generator=generator_for(job.seed),
            output_type="np",
            callback_on_step_end=step_callback(job.steps, on_step, tracker),
        )

    output, record, recovery = run_with_recovery(loaded, shape, call, checkpoint)
    image = numpy_to_tensor(output.images)
    check_finite(image, loaded)
    if crop is not None:
        assert masked is not None
        picture_h, picture_w = masked.picture.shape[:2]
        image = stitch(masked.picture, image[0], crop)[None]
        mask_note = describe_crop(crop, masked.settings, picture_w, picture_h, (width, height)) + "\n"
    report = (
        f"{loaded.name} ({loaded.identity.describe()}): {len(references)} reference(s) -> "
        f"{image.shape[2]}x{image.shape[1]}, {job.steps} steps, CFG {'on' if cfg_on else 'off'} "
        f"({true_cfg_scale:g}), seed {job.seed}, {clock.seconds:.1f} s\n{describe_resizes(references)}\n"
        + mask_note
        + (f"{lightning_note}\n" if lightning_note else "")
        + (f"{recovery}\n" if recovery else "")
        + f"{record.describe()}\n"
        + record.plan
    )
    return EditResult(image=image, seconds=clock.seconds, report=report, record=record)
