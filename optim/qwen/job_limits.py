"""What a job may ask of these models, and Edit's automatic output size: one copy for the run
functions, the plan preview and the nodes' input ranges."""

from __future__ import annotations

# Edit-Plus takes up to three references.
MAX_REFERENCES = 3
# Output sides must be multiples of 16 (8x VAE scale, 2x2 patches).
SIZE_MULTIPLE = 16
MIN_SIZE, MAX_SIZE = 64, 4096
# Edit's automatic output: about this many pixels at the first reference's aspect ratio.
AUTO_AREA = 1024 * 1024
# Layered's pipeline takes these resolutions only.
RESOLUTIONS = (640, 1024)
MIN_LAYERS, MAX_LAYERS = 1, 10
MAX_STEPS = 200


def edit_output_size(width: int, height: int, aspect: float) -> tuple[int, int]:
    """(width, height): the ones asked for, or with both 0 about 1 megapixel at ``aspect`` (width /
    height of the first reference), by diffusers' own rule, so the preview sizes what the run makes.
    diffusers itself would take the aspect of the last reference; the first is the picture edited."""
    if width and height:
        return width, height
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

    auto_width, auto_height = calculate_dimensions(AUTO_AREA, aspect)
    return int(auto_width), int(auto_height)
