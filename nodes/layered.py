"""LayeredDecompose: split a picture into RGBA layers with Qwen-Image-Layered."""

from __future__ import annotations

from pathlib import Path

import torch
from comfy_api.latest import io, ui

from ..optim import (
    LayeredJob,
    LoadedPipeline,
    check_one_image,
    checkerboard_composite,
    job_limits,
    run_layered,
    save_layers_psd,
    with_alpha_from_mask,
)
from .comfy_glue import node_run, output_directory, phase_checkpoint, progress_callback
from .image_inputs import images_from_batches
from .loader import held
from .types import CATEGORY, SEED_MAX, QwenPipeline


class LayeredDecompose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitLayeredDecompose",
            display_name="QwenFit Layered Decompose",
            category=CATEGORY,
            hidden=[io.Hidden.unique_id],
            description="Split an image into RGBA layers with Qwen-Image-Layered. Layers come bottom first.",
            inputs=[
                QwenPipeline.Input("pipeline", tooltip="From QwenFit Optimized Loader (a Layered model)."),
                io.Image.Input("image", tooltip="The picture to split (first image of the batch)."),
                io.Mask.Input(
                    "mask", optional=True, tooltip="Optional alpha, as Load Image gives it (1 = transparent)."
                ),
                io.Int.Input("layers", default=4, min=job_limits.MIN_LAYERS, max=job_limits.MAX_LAYERS),
                io.Combo.Input(
                    "resolution",
                    options=[str(r) for r in job_limits.RESOLUTIONS],
                    default="640",
                    tooltip="640 is what the authors recommend; 1024 is about 2.5x slower.",
                ),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="",
                    tooltip="Describe the image. Empty: the model captions it itself, which costs "
                    "a 7B-model text generation.",
                ),
                io.String.Input("negative_prompt", multiline=True, default=" "),
                io.Float.Input("true_cfg_scale", default=4.0, min=1.0, max=20.0, step=0.1),
                io.Int.Input("steps", default=50, min=1, max=job_limits.MAX_STEPS),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),
                io.Boolean.Input(
                    "save_psd",
                    default=False,
                    optional=True,
                    tooltip="Also write a layered PSD (bottom layer first) to ComfyUI's output folder; "
                    "an existing file is never overwritten.",
                ),
                io.String.Input(
                    "filename_prefix",
                    default="QwenFit/layers",
                    optional=True,
                    tooltip="Where the PSD goes, under the output folder.",
                ),
            ],
            outputs=[
                io.Image.Output(
                    "layer_images", display_name="layer_images", tooltip="RGB of each layer, bottom first."
                ),
                io.Mask.Output(
                    "layer_masks",
                    display_name="layer_masks",
                    tooltip="Each layer's transparency, 1 = transparent (as Load Image); "
                    "Join Image with Alpha turns layers + mask into RGBA.",
                ),
                io.Image.Output(
                    "preview", display_name="preview", tooltip="All layers composited over a checkerboard."
                ),
                io.String.Output("report", display_name="report"),
            ],
        )

    @classmethod
    def execute(
        cls,
        pipeline: LoadedPipeline,
        image,
        layers: int,
        resolution: str,
        prompt: str,
        negative_prompt: str,
        true_cfg_scale: float,
        steps: int,
        seed: int,
        save_psd: bool = False,
        filename_prefix: str = "QwenFit/layers",
        mask=None,
    ) -> io.NodeOutput:
        if isinstance(image, torch.Tensor):
            check_one_image(image, "LayeredDecompose")
        source = images_from_batches([("image", image)], mode="RGBA")[0]
        if mask is not None:
            source = with_alpha_from_mask(source, mask)
        job = LayeredJob(
            layers=layers,
            resolution=int(resolution),
            prompt=prompt.strip(),
            negative_prompt=negative_prompt,
            true_cfg_scale=true_cfg_scale,
            steps=steps,
            seed=seed,
        )
        node_id = cls.hidden.unique_id
        pipeline = held(pipeline)  # loaded again if another model replaced it
        with node_run(node_id, pipeline):
            result = run_layered(
                pipeline, source, job, on_step=progress_callback(steps, node_id), checkpoint=phase_checkpoint
            )
        preview = checkerboard_composite(result.rgb, result.alpha)
        transparency = (1.0 - result.alpha).contiguous()
        report = result.report
        if save_psd:
            report += "\n" + save_layers_psd(result.rgb, result.alpha, Path(output_directory()), filename_prefix)
        return io.NodeOutput(result.rgb, transparency, preview, report, ui=ui.PreviewText(report))
