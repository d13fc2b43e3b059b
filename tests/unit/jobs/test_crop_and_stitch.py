"""Masked editing's geometry: the mask's box, the crop around it, the blend weights and the paste back;
then one tiny-model run per case that must hold exactly (outside bytes, full mask = unmasked edit)."""

from __future__ import annotations

import pytest
import torch
from tiny_files import FOLDER, MODELS

from optim import (
    DiffusersFolder,
    EditJob,
    LoadRequest,
    MaskedPicture,
    MaskSettings,
    QwenFitError,
    load_pipeline,
    run_edit,
    tensor_to_pil,
)
from optim.jobs.crop_and_stitch import (
    MIN_CROP_SIDE,
    Box,
    blend_weights,
    crop_box,
    mask_box,
    plan_crop,
    prepare_mask,
    stitch,
)


def _mask(height: int, width: int, *boxes: tuple[int, int, int, int], value: float = 1.0) -> torch.Tensor:
    mask = torch.zeros(height, width)
    for left, top, right, bottom in boxes:
        mask[top:bottom, left:right] = value
    return mask


def _picture(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE as Load Image makes it: uint8 / 255 as float32."""
    bytes_ = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed))
    return bytes_.float() / 255.0


def test_mask_box_one_pixel_several_regions_and_empty():
    assert mask_box(_mask(50, 80, (10, 20, 11, 21))) == Box(10, 20, 11, 21)
    assert mask_box(_mask(50, 80, (2, 3, 6, 8), (70, 40, 75, 45))) == Box(2, 3, 75, 45)  # one box for both
    assert mask_box(torch.zeros(50, 80)) is None
    soft = torch.zeros(50, 80)
    soft[5, 7] = 0.01
    assert mask_box(soft) == Box(7, 5, 8, 6)


def test_crop_box_grows_by_the_margin_clips_at_the_border_and_keeps_a_minimum():
    settings = MaskSettings(context_margin=20, feather=8)
    assert crop_box(Box(100, 100, 200, 150), 400, 300, settings) == Box(80, 80, 220, 170)
    assert crop_box(Box(0, 0, 100, 100), 400, 300, settings) == Box(0, 0, 120, 120)  # touching the border
    one = crop_box(Box(5, 5, 6, 6), 400, 300, MaskSettings(context_margin=0, feather=0))
    assert (one.width, one.height) == (MIN_CROP_SIDE, MIN_CROP_SIDE) and one.left == 0 and one.top == 0
    # The blend must fit in the crop: the margin is at least the feather's reach.
    assert crop_box(Box(100, 100, 200, 150), 400, 300, MaskSettings(context_margin=0, feather=30)) == Box(
        70, 70, 230, 180
    )
    # An explicit output aspect grows the short side where the picture has room.
    wide = crop_box(Box(100, 100, 200, 150), 400, 300, settings, aspect=2.0)
    assert wide.width == 2 * wide.height and wide.height == 90
    tall = crop_box(Box(100, 100, 200, 150), 400, 300, settings, aspect=0.5)
    assert tall.height == 280 and 0 <= tall.top and tall.bottom <= 300


def test_blend_weights_one_inside_zero_beyond_the_feather_soft_kept_full_stays_one():
    mask = _mask(64, 64, (20, 20, 40, 40))
    weights = blend_weights(mask, 8)
    assert torch.equal(weights[20:40, 20:40], torch.ones(20, 20))
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[12:48, 12:48] = False  # the mask grown by the feather (8)
    assert weights[outside].max() == 0 and weights[13, 30] > 0 and weights[19, 30] < 1
    assert torch.equal(blend_weights(torch.ones(32, 48), 16), torch.ones(32, 48))
    assert torch.equal(blend_weights(mask, 0), mask)
    soft = blend_weights(_mask(64, 64, (10, 10, 54, 54), value=0.5), 6)
    assert torch.allclose(soft[25:40, 25:40], torch.full((15, 15), 0.5))


def test_prepare_mask_batches_sizes_and_bad_masks():
    mask, notes = prepare_mask(_mask(32, 32, (0, 0, 16, 16))[None].repeat(2, 1, 1), 64, 64)
    assert (
        mask.shape == (64, 64) and "a batch of 2" in notes[0] and "32x32 stretched to the picture's 64x64" in notes[1]
    )
    assert mask[:30, :30].min() == 1 and mask[34:, 34:].max() == 0
    with pytest.raises(QwenFitError, match="not an image"):
        prepare_mask(torch.zeros(1, 8, 8, 3), 8, 8)
    with pytest.raises(QwenFitError, match="NaN"):
        prepare_mask(torch.full((8, 8), float("nan")), 8, 8)
    with pytest.raises(QwenFitError, match="nothing to edit.*mask_mode to off"):
        plan_crop(torch.zeros(1, 64, 64), 128, 128, MaskSettings())


def test_stitch_copies_the_picture_exactly_where_the_weight_is_zero():
    picture = _picture(120, 160)
    plan = plan_crop(_mask(120, 160, (70, 50, 90, 60)), 160, 120, MaskSettings(context_margin=16, feather=6))
    edited = torch.rand(1024 // 16 * 16, 1024 // 16 * 16, 3)  # any size: resized to the crop
    out = stitch(picture, edited, plan)
    weights = torch.zeros(120, 160)
    crop = plan.crop
    weights[crop.top : crop.bottom, crop.left : crop.right] = plan.weights
    assert out.shape == picture.shape and out.dtype == torch.float32
    assert torch.equal(out[weights == 0], picture[weights == 0])
    assert (out[50:60, 70:90] != picture[50:60, 70:90]).any()
    # uint8 bytes survive ComfyUI's SaveImage rounding (255 * x, truncated).
    saved = (255.0 * out.numpy()).clip(0, 255).astype("uint8")
    original = (255.0 * picture.numpy()).clip(0, 255).astype("uint8")
    assert (saved[(weights == 0).numpy()] == original[(weights == 0).numpy()]).all()
    rgba = torch.cat([picture, torch.full((120, 160, 1), 0.25)], dim=-1)
    assert torch.equal(stitch(rgba, edited, plan)[..., 3], rgba[..., 3])  # alpha kept


@pytest.fixture(scope="module")
def tiny_edit():
    loaded = load_pipeline(LoadRequest(DiffusersFolder(MODELS / "diffusers" / FOLDER["edit-2509"])))
    yield loaded
    if loaded.engine is not None:
        loaded.engine.release()


def test_masked_run_keeps_outside_bytes_and_a_full_mask_is_the_unmasked_edit(tiny_edit):
    picture = _picture(96, 128, seed=3)
    reference = tensor_to_pil(picture, "RGB")
    job = EditJob(prompt="make it blue", steps=2, seed=5, width=128, height=128)
    settings = MaskSettings(context_margin=8, feather=4)
    masked = run_edit(
        tiny_edit, [reference], job, masked=MaskedPicture(picture, _mask(96, 128, (90, 60, 100, 70)), settings)
    )
    out = masked.image[0]
    assert out.shape == picture.shape
    keep = torch.ones(96, 128, dtype=torch.bool)
    keep[60 - 4 : 70 + 4, 90 - 4 : 100 + 4] = False  # the mask grown by the feather
    assert torch.equal(out[keep], picture[keep]) and not torch.equal(out[60:70, 90:100], picture[60:70, 90:100])
    assert "crop x 63..127, y 32..96 (64x64)" in masked.report and "feather 4 px" in masked.report
    assert "edited at 128x128 (scale 2x)" in masked.report and "reference 1: 64x64" in masked.report

    sized = EditJob(prompt="make it blue", steps=2, seed=5, width=128, height=96)
    plain = run_edit(tiny_edit, [reference], sized).image
    full = run_edit(tiny_edit, [reference], sized, masked=MaskedPicture(picture, torch.ones(1, 96, 128), settings))
    assert torch.equal(full.image, plain)
    off = run_edit(
        tiny_edit, [reference], sized, masked=MaskedPicture(picture, torch.zeros(96, 128), MaskSettings("off"))
    )
    assert torch.equal(off.image, plain) and "mask_mode is off" in off.report


def test_the_plan_preview_plans_the_crop_not_the_picture():
    from optim import PreviewSettings, Variant
    from optim.jobs.plan_preview import job_shape

    wide = PreviewSettings(model="m", aspect=3.0)
    assert (job_shape(wide, Variant.EDIT_2509).width, job_shape(wide, Variant.EDIT_2509).height) != (1024, 1024)
    masked = job_shape(PreviewSettings(model="m", aspect=3.0, masked=True), Variant.EDIT_2509)
    assert (masked.width, masked.height) == (1024, 1024)  # ~1 MP for the crop, whatever the picture's aspect
    sized = job_shape(PreviewSettings(model="m", width=512, height=256, masked=True), Variant.EDIT_2509)
    assert (sized.width, sized.height) == (512, 256)  # the crop is edited at the size asked


def test_a_masked_run_through_a_lightning_lora_keeps_the_outside_and_takes_the_lora_inside(tiny_edit):
    """The Lightning path (its LoRA, its scheduler) with a mask: the outside stays the input's, the inside is
    the LoRA's edit (it differs from the same masked run without the LoRA)."""
    from optim import LoraChoice, LoraStack

    picture = _picture(96, 128, seed=4)
    reference = tensor_to_pil(picture, "RGB")
    job = EditJob(prompt="make it blue", steps=2, seed=5, width=64, height=64)
    masked = MaskedPicture(picture, _mask(96, 128, (20, 30, 40, 50)), MaskSettings(context_margin=8, feather=4))
    lora = LoraStack((LoraChoice(MODELS / "loras" / "qwenfit_tiny_Lightning-4steps_kohya.safetensors"),))
    with_lora = run_edit(tiny_edit.with_loras(lora), [reference], job, masked=masked)
    without = run_edit(tiny_edit, [reference], job, masked=masked)
    keep = torch.ones(96, 128, dtype=torch.bool)
    keep[30 - 4 : 50 + 4, 20 - 4 : 40 + 4] = False
    out = with_lora.image[0]
    assert out.shape == picture.shape and torch.equal(out[keep], picture[keep])
    assert not torch.equal(out[30:50, 20:40], without.image[0][30:50, 20:40])
    assert "Lightning" in with_lora.report and "crop x" in with_lora.report
