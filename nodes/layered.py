"""LayeredDecompose: split a picture into RGBA layers with Qwen-Image-Layered."""

from __future__ import annotations

from pathlib import Path

import torch
from comfy_api.latest import io, ui

from ..optim.compositing import checkerboard_composite
from ..optim.errors import QwenFitError
from ..optim.images import with_alpha_from_mask
from ..optim.layered import MAX_LAYERS, MIN_LAYERS, RESOLUTIONS, LayeredJob, run_layered
from ..optim.loading import LoadedPipeline
from ..optim.psd_export import layers_to_pil, write_psd
from ..optim.runs import MAX_STEPS
from .comfy_glue import after_run, output_directory, phase_checkpoint, progress_callback
from .image_inputs import images_from_batches
from .types import CATEGORY, SEED_MAX, QwenPipeline


class LayeredDecompose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="QwenFitLayeredDecompose",
            display_name="QwenFit Layered Decompose",
            category=CATEGORY,
            description="Split an image into RGBA layers with Qwen-Image-Layered. Layers come bottom first.",
            inputs=[
                QwenPipeline.Input("pipeline", tooltip="From QwenFit Optimized Loader (a Layered model)."),
                io.Image.Input("image", tooltip="The picture to split (first image of the batch)."),
                io.Mask.Input(
                    "mask", optional=True, tooltip="Optional alpha, as Load Image gives it (1 = transparent)."
                ),
                io.Int.Input("layers", default=4, min=MIN_LAYERS, max=MAX_LAYERS),
                io.Combo.Input(
                    "resolution",
                    options=[str(r) for r in RESOLUTIONS],
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
                io.Int.Input("steps", default=50, min=1, max=MAX_STEPS),
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
        if isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[0] > 1:
            # diffusers 0.42 groups the layers of a batch wrongly; one image per run is what works.
            raise QwenFitError(
                f"LayeredDecompose takes one image, got a batch of {image.shape[0]}. Pick one with "
                "'Image From Batch' (or run the images one by one)."
            )
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
        try:
            result = run_layered(
                pipeline, source, job, on_step=progress_callback(steps, None), checkpoint=phase_checkpoint
            )
        finally:
            after_run()
        preview = checkerboard_composite(result.rgb, result.alpha)
        transparency = (1.0 - result.alpha).contiguous()
        report = result.report
        if save_psd:
            count = result.rgb.shape[0]
            names = [
                f"Layer {i + 1}" + (" (bottom)" if i == 0 else " (top)" if i == count - 1 else "") for i in range(count)
            ]
            path = write_psd(layers_to_pil(result.rgb, result.alpha), Path(output_directory()), filename_prefix, names)
            report += f"\nPSD: {path.relative_to(Path(output_directory()).resolve())} ({count} layers, bottom first)"
        return io.NodeOutput(result.rgb, transparency, preview, report, ui=ui.PreviewText(report))
