"""InstructEdit: edit one to three reference images as the prompt says."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..optim import EditJob, LoadedPipeline, job_limits, run_edit
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
    ) -> io.NodeOutput:
        references = images_from_batches([("image", image), ("image2", image2), ("image3", image3)])
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
                pipeline, references, job, on_step=progress_callback(steps, node_id), checkpoint=phase_checkpoint
            )
        return io.NodeOutput(result.image, result.report, ui=ui.PreviewText(result.report))
