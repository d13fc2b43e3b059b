"""Masked editing by crop and stitch: edit only the mask's neighbourhood, leave every other pixel as it was.

Qwen-Image-Edit regenerates the whole picture, so an unmasked edit moves colours and texture everywhere
(and Edit-2509 shifts pixels). Here the edit runs on a crop around the mask (the mask's bounding box grown
by a context margin), at the model's ~1 MP size, and only the feathered mask is pasted back: the picture's
own values are copied wherever the blend weight is 0, so those bytes are exact.

Mask convention (ComfyUI's): a MASK is [H, W] or [B, H, W] floats in 0..1, 1 = the selected region, which
is what the mask editor paints and what Load Image gives for transparent pixels (mask = 1 - alpha). Soft
values blend in proportion. Every painted pixel, in one region or several, lies in one crop.

Pure functions on tensors; nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import QwenFitError

MASK_MODES = ("off", "crop_and_stitch")
DEFAULT_MASK_MODE = "crop_and_stitch"
# Pixels of context around the mask's box: enough for the model to match light and texture at the seam.
DEFAULT_CONTEXT_MARGIN = 64
# The blend goes from 1 at the mask's edge to 0 this many pixels outside it (rounded up to even).
DEFAULT_FEATHER = 16
MAX_CONTEXT_MARGIN = 2048
MAX_FEATHER = 256
# A crop side below this (where the picture allows) is grown: the model sees a few tokens of context at least.
MIN_CROP_SIDE = 64


@dataclass(frozen=True)
class Box:
    """A rectangle of pixels: columns left..right-1, rows top..bottom-1."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def describe(self) -> str:
        return f"x {self.left}..{self.right}, y {self.top}..{self.bottom} ({self.width}x{self.height})"


@dataclass(frozen=True)
class MaskSettings:
    """How a mask is used: ``mode`` one of MASK_MODES, margins in pixels of the picture."""

    mode: str = DEFAULT_MASK_MODE
    context_margin: int = DEFAULT_CONTEXT_MARGIN
    feather: int = DEFAULT_FEATHER

    def __post_init__(self) -> None:
        if self.mode not in MASK_MODES:
            raise QwenFitError(f"mask_mode '{self.mode}' is unknown; pick one of {', '.join(MASK_MODES)}.")
        if not 0 <= self.context_margin <= MAX_CONTEXT_MARGIN:
            raise QwenFitError(f"context_margin={self.context_margin}: use 0 to {MAX_CONTEXT_MARGIN} pixels.")
        if not 0 <= self.feather <= MAX_FEATHER:
            raise QwenFitError(f"feather={self.feather}: use 0 to {MAX_FEATHER} pixels.")

    @property
    def feather_reach(self) -> int:
        """How far outside the mask the blend weight is above 0 (the feather rounded up to even)."""
        return 2 * _half(self.feather)


@dataclass(frozen=True)
class CropPlan:
    """Where the edit runs: the mask's box, the crop around it, and the blend weights over the crop."""

    mask_box: Box
    crop: Box
    weights: torch.Tensor  # [crop.height, crop.width] in 0..1: 0 keeps the picture, 1 takes the edit
    notes: tuple[str, ...]

    def whole_picture(self, width: int, height: int) -> bool:
        return self.crop == Box(0, 0, width, height)


def _half(feather: int) -> int:
    return (feather + 1) // 2


def prepare_mask(mask: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The MASK as one [height, width] float tensor in 0..1 on the CPU, with notes on what was changed:
    the first of a batch is used; a mask of another size is stretched to the picture (bilinear, as
    ComfyUI's own nodes do)."""
    if not isinstance(mask, torch.Tensor):
        raise QwenFitError(f"mask must be a MASK, got {type(mask).__name__}; connect the MASK output of Load Image.")
    notes: list[str] = []
    if mask.ndim == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim == 3:
        if mask.shape[0] == 0:
            raise QwenFitError("mask is an empty batch; connect the MASK output of Load Image or the mask editor.")
        if mask.shape[0] > 1:
            notes.append(f"mask: a batch of {mask.shape[0]}; the first is used")
        mask = mask[0]
    if mask.ndim != 2 or min(mask.shape) == 0:
        raise QwenFitError(
            f"mask must be a [height, width] MASK, got shape {list(mask.shape)}; connect the MASK output of "
            "Load Image (or the mask editor), not an image."
        )
    if not torch.isfinite(mask).all():
        raise QwenFitError("mask contains NaN or infinite values; check the node that produced it.")
    mask = mask.detach().float().cpu()
    if mask.min() < 0 or mask.max() > 1:
        notes.append("mask: values outside 0..1 clamped")
        mask = mask.clamp(0, 1)
    if tuple(mask.shape) != (height, width):
        notes.append(f"mask: {mask.shape[1]}x{mask.shape[0]} stretched to the picture's {width}x{height}")
        mask = F.interpolate(mask[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        mask = mask.clamp(0, 1)
    return mask, tuple(notes)


def mask_box(mask: torch.Tensor) -> Box | None:
    """The smallest box holding every pixel of ``mask`` above 0; None for an empty mask."""
    rows = torch.nonzero(mask.amax(dim=1) > 0)
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(mask.amax(dim=0) > 0)
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _grow_side(low: int, high: int, size: int, want: int) -> tuple[int, int]:
    """low..high grown evenly to ``want`` long (or ``size``), shifted to stay inside 0..size."""
    want = min(max(want, high - low), size)
    extra = want - (high - low)
    low -= extra // 2
    high += extra - extra // 2
    if low < 0:
        high, low = high - low, 0
    if high > size:
        low, high = low - (high - size), size
    return max(low, 0), min(high, size)


def crop_box(box: Box, width: int, height: int, settings: MaskSettings, aspect: float | None = None) -> Box:
    """``box`` grown by the context margin (at least the feather's reach, so the blend stays inside), at
    least MIN_CROP_SIDE a side, clipped to the width x height picture; with ``aspect`` (width / height of
    an explicit output size) grown further toward that aspect where the picture has room."""
    grow = max(settings.context_margin, settings.feather_reach)
    left, top = max(box.left - grow, 0), max(box.top - grow, 0)
    right, bottom = min(box.right + grow, width), min(box.bottom + grow, height)
    left, right = _grow_side(left, right, width, MIN_CROP_SIDE)
    top, bottom = _grow_side(top, bottom, height, MIN_CROP_SIDE)
    if aspect is not None:
        if (right - left) / (bottom - top) < aspect:
            left, right = _grow_side(left, right, width, round((bottom - top) * aspect))
        else:
            top, bottom = _grow_side(top, bottom, height, round((right - left) / aspect))
    return Box(left, top, right, bottom)


def _replicate_pool(values: torch.Tensor, radius: int, reduce: str) -> torch.Tensor:
    """A square window of side 2*radius+1 over [H, W] ``values`` (max or mean), edges replicated;
    separable, so a wide feather on a large crop stays cheap."""
    if radius == 0:
        return values
    x = F.pad(values[None, None], (radius, radius, radius, radius), mode="replicate")
    k = 2 * radius + 1
    if reduce == "max":
        x = F.max_pool2d(F.max_pool2d(x, (1, k), stride=1), (k, 1), stride=1)
    else:
        x = F.avg_pool2d(F.avg_pool2d(x, (1, k), stride=1), (k, 1), stride=1)
    return x[0, 0]


def blend_weights(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Blend weights from a [H, W] mask: the mask dilated by half the feather, then box-blurred by the
    other half. A pixel inside a binary mask gets 1, the weight falls to 0 at ``feather`` (rounded up
    to even) pixels outside it, a soft mask's flat values are kept, and a full mask stays 1 (the picture's
    edges are replicated, not treated as unmasked)."""
    half = _half(feather)
    weights = _replicate_pool(_replicate_pool(mask, half, "max"), half, "mean").clamp(0, 1)
    return torch.where(mask >= 1, torch.ones_like(weights), weights)  # rounding in the mean must not leak


def plan_crop(
    mask: torch.Tensor, width: int, height: int, settings: MaskSettings, aspect: float | None = None
) -> CropPlan:
    """Where to edit a width x height picture for ``mask`` (any MASK; see ``prepare_mask``). Raises
    QwenFitError for an empty mask. ``aspect``: the explicit output size's width / height, if any."""
    mask, notes = prepare_mask(mask, width, height)
    box = mask_box(mask)
    if box is None:
        raise QwenFitError(
            "the mask is empty (all 0): there is nothing to edit. Paint the region to change in the mask "
            "editor (right-click Load Image > Open in MaskEditor; painted = 1 = edited), use a picture whose "
            "transparent pixels mark it, or set mask_mode to off to edit the whole picture."
        )
    crop = crop_box(box, width, height, settings, aspect)
    region = mask[crop.top : crop.bottom, crop.left : crop.right]
    return CropPlan(box, crop, blend_weights(region, settings.feather), notes)


def resize_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """A [H, W, C] float image resized to width x height (bicubic, antialiased); the same tensor when
    the size is already right, so an edit at the crop's own size is pasted unchanged."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    chw = image.permute(2, 0, 1)[None].float()
    out = F.interpolate(chw, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return out[0].permute(1, 2, 0).clamp(0, 1)


def stitch(picture: torch.Tensor, edited: torch.Tensor, plan: CropPlan) -> torch.Tensor:
    """The picture ([H, W, C], C 1/3/4) with ``edited`` ([h, w, 3], the crop's edit at any size) pasted
    into the crop by the plan's weights. Where a weight is 0 the picture's own values are copied (exact
    bytes); where it is 1 the edit's; alpha is kept; a gray picture comes back as RGB."""
    if picture.shape[-1] == 1:
        picture = picture.expand(-1, -1, 3)
    crop = plan.crop
    out = picture.detach().to(device="cpu", dtype=torch.float32).clone()
    patch = resize_image(edited.detach().to(device="cpu", dtype=torch.float32), crop.width, crop.height)
    region = out[crop.top : crop.bottom, crop.left : crop.right, :3]
    weight = plan.weights[..., None]
    blended = patch * weight + region * (1 - weight)
    region.copy_(torch.where(weight > 0, blended, region))
    return out


def describe_crop(plan: CropPlan, settings: MaskSettings, width: int, height: int, edit_size: tuple[int, int]) -> str:
    """The report's lines: the mask's box, the crop, the scale of the edit, the blend."""
    edit_w, edit_h = edit_size
    crop = plan.crop
    scale_x, scale_y = edit_w / crop.width, edit_h / crop.height
    scale = f"{scale_x:.3g}x" if abs(scale_x - scale_y) < 5e-3 else f"{scale_x:.3g}x wide, {scale_y:.3g}x high"
    blended = int((plan.weights > 0).sum())
    replaced = int((plan.weights >= 1).sum())
    lines = [
        f"masked edit (crop_and_stitch, MASK 1 = edit): mask box {plan.mask_box.describe()} of the "
        f"{width}x{height} picture; every painted pixel is in this one crop",
        f"  crop {crop.describe()} (context margin {settings.context_margin} px), edited at {edit_w}x{edit_h} "
        f"(scale {scale}); the plan is made for the crop's {edit_w}x{edit_h}, not the picture's size",
        f"  pasted back with feather {settings.feather} px: {blended} pixels take the edit ({replaced} fully), "
        f"the other {width * height - blended} are the input's own values; output {width}x{height}",
    ]
    lines += [f"  {note}" for note in plan.notes]
    return "\n".join(lines)


@dataclass(frozen=True)
class MaskedPicture:
    """The picture an edit changes under a mask: its ComfyUI IMAGE values ([H, W, C] floats, copied
    exactly outside the mask), the MASK, and how the mask is used."""

    picture: torch.Tensor
    mask: torch.Tensor
    settings: MaskSettings = MaskSettings()
