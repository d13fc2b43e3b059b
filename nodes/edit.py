"""InstructEdit: edit one to three reference images as the prompt says."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..optim import (
    MASK_MODES,
    MAX_CONTEXT_MARGIN,
    MAX_FEATHER,
    EditJob,
    LoadedPipeline,
    MaskedPicture,
    MaskSettings,
    job_limits,
    run_edit,
)
from .comfy_glue import node_run, phase_checkpoint, progress_callback
from .image_inputs import images_from_batches
from .loader import held
from .types import CATEGORY, SEED_MAX, QwenPipeline


class InstructEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitInstructEdit",
            display_name="QwenFit Instruct Edit",
            category=CATEGORY,
            hidden=[io.Hidden.unique_id],
            description="Edit images by instruction with Qwen-Image-Edit-2509/2511. Each image of a connected "
            "batch counts as one reference (up to 3 in all).",
            inputs=[
                QwenPipeline.Input("pipeline", tooltip="From QwenFit Optimized Loader (an Edit model)."),
                io.Image.Input("image", tooltip="The picture to edit (reference 1; sets the aspect ratio)."),
                io.String.Input("prompt", multiline=True, default="", tooltip="What to change."),
                io.String.Input(
                    "negative_prompt",
                    multiline=True,
                    default=" ",
                    tooltip="Kept at a single space by default so true CFG runs, as the model authors recommend.",
                ),
                io.Float.Input(
                    "true_cfg_scale",
                    default=4.0,
                    min=1.0,
                    max=20.0,
                    step=0.1,
                    tooltip="1 turns CFG off (twice as fast).",
                ),
                io.Int.Input("steps", default=40, min=1, max=job_limits.MAX_STEPS),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),
                io.Int.Input(
                    "width",
                    default=0,
                    min=0,
                    max=job_limits.MAX_SIZE,
                    step=job_limits.SIZE_MULTIPLE,
                    tooltip="0 with height 0: about 1 megapixel at the first reference's aspect.",
                ),
                io.Int.Input("height", default=0, min=0, max=job_limits.MAX_SIZE, step=job_limits.SIZE_MULTIPLE),
                io.Image.Input("image2", optional=True, tooltip="Optional reference 2."),
                io.Image.Input("image3", optional=True, tooltip="Optional reference 3."),
                # After the existing widgets, so workflows saved before keep their widget values in place.
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="Optional: edit only here. ComfyUI's MASK, 1 = edit: what the mask editor paints, "
                    "the transparent pixels of Load Image's picture. The output keeps the picture's size and "
                    "its exact pixels outside the feathered mask.",
                ),
                io.Combo.Input(
                    "mask_mode",
                    options=list(MASK_MODES),
                    default=MaskSettings.mode,
                    optional=True,
                    tooltip="crop_and_stitch: edit a crop around the mask at ~1 MP (width/height 0) or at "
                    "width x height, paste it back feathered. off: ignore the mask. No mask: the whole picture.",
                ),
                io.Int.Input(
                    "context_margin",
                    default=MaskSettings.context_margin,
                    min=0,
                    max=MAX_CONTEXT_MARGIN,
                    optional=True,
                    tooltip="Pixels of the picture around the mask's box that the model sees (at least the feather).",
                ),
                io.Int.Input(
                    "feather",
                    default=MaskSettings.feather,
                    min=0,
                    max=MAX_FEATHER,
                    optional=True,
                    tooltip="The paste fades from the mask's edge to 0 this many pixels outside it; 0: a hard edge.",
                ),
            ],
            outputs=[
                io.Image.Output("edited", display_name="edited"),
                io.String.Output("report", display_name="report"),
            ],
        )

    @classmethod
    def execute(
        cls,
        pipeline: LoadedPipeline,
        image,
        prompt: str,
        negative_prompt: str,
        true_cfg_scale: float,
        steps: int,
        seed: int,
        width: int,
        height: int,
        image2=None,
        image3=None,
        mask=None,
        mask_mode: str = MaskSettings.mode,
        context_margin: int = MaskSettings.context_margin,
        feather: int = MaskSettings.feather,
    ) -> io.NodeOutput:
        references = images_from_batches([("image", image), ("image2", image2), ("image3", image3)])
        settings = MaskSettings(mask_mode, context_margin, feather)
        masked = None if mask is None else MaskedPicture(image[0], mask, settings)
        job = EditJob(
            prompt=prompt,
            negative_prompt=negative_prompt,
            true_cfg_scale=true_cfg_scale,
            steps=steps,
            seed=seed,
            width=width,
            height=height,
        )
        node_id = cls.hidden.unique_id
        pipeline = held(pipeline)  # loaded again if another model replaced it
        with node_run(node_id, pipeline):
            result = run_edit(
                pipeline,
                references,
                job,
                on_step=progress_callback(steps, node_id),
                checkpoint=phase_checkpoint,
                masked=masked,
            )
        return io.NodeOutput(result.image, result.report, ui=ui.PreviewText(result.report))
