"""Masked Instruct Edit through the real server on tiny models: the mask from Load Image's alpha (transparent
= MASK 1 = edited), exact bytes outside the feathered mask, the input's size, a full mask equal to the
unmasked edit, and the odd masks (one pixel, border, several regions, soft, another size, empty)."""

from __future__ import annotations

import numpy as np
from conftest import SAMPLE
from graphs import EDIT, loader
from PIL import Image

FEATHER = 16  # the node's default: the blend reaches 16 px outside the mask


def _rgba(name: str, comfy, size: tuple[int, int], boxes: list[tuple[int, int, int, int]], alpha: int = 0) -> str:
    """The sample at ``size`` with ``alpha`` (0 = transparent = MASK 1) in each (left, top, right, bottom) box."""
    picture = Image.open(SAMPLE).convert("RGBA").resize(size)
    array = np.asarray(picture).copy()
    for left, top, right, bottom in boxes:
        array[top:bottom, left:right, 3] = alpha
    Image.fromarray(array, "RGBA").save(comfy.input_dir / name)
    return name


def _edit(picture: list, mask: list | None, prefix: str, size: int = 128, **extra) -> dict:
    inputs = {
        "pipeline": ["1", 0],
        "image": picture,
        "prompt": "make the object red",
        "negative_prompt": " ",
        "true_cfg_scale": 4.0,
        "steps": 2,
        "seed": 7,
        "width": size,
        "height": size,
        **extra,
    }
    if mask is not None:
        inputs["mask"] = mask
    return {"class_type": "QwenFitInstructEdit", "inputs": inputs}


def _save(node: str, prefix: str) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": [node, 0], "filename_prefix": f"masked/{prefix}"}}


def _saved(result, prefix: str) -> np.ndarray:
    path = next(f for f in result.files if f.name.startswith(f"{prefix}_"))
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def _outside(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]], reach: int = FEATHER) -> np.ndarray:
    """True where no box grown by ``reach`` reaches: those pixels must be the input's bytes."""
    keep = np.ones(shape, dtype=bool)
    for left, top, right, bottom in boxes:
        keep[max(top - reach, 0) : bottom + reach, max(left - reach, 0) : right + reach] = False
    return keep


CASES = {  # name: (picture size, transparent boxes, alpha inside them)
    "object": ((768, 512), [(300, 200, 420, 300)], 0),
    "one_pixel": ((768, 512), [(500, 100, 501, 101)], 0),
    "border_and_two_regions": ((768, 512), [(0, 0, 60, 40), (600, 400, 680, 470)], 0),
    "soft": ((768, 512), [(100, 300, 200, 400)], 128),
}


def test_masked_edits_keep_every_byte_outside_the_feathered_mask(comfy):
    graph = {"1": loader(EDIT)}
    for i, (name, (size, boxes, alpha)) in enumerate(CASES.items()):
        load, edit, save = f"{10 + 3 * i}", f"{11 + 3 * i}", f"{12 + 3 * i}"
        graph[load] = {
            "class_type": "LoadImage",
            "inputs": {"image": _rgba(f"mask_{name}.png", comfy, size, boxes, alpha)},
        }
        graph[edit] = _edit([load, 0], [load, 1], name)
        graph[save] = _save(edit, name)
    # A mask of another size (half the picture's): stretched to the picture, with a note.
    graph["40"] = {
        "class_type": "LoadImage",
        "inputs": {"image": _rgba("mask_half.png", comfy, (384, 256), [(150, 100, 210, 150)])},
    }
    graph["41"] = _edit(["10", 0], ["40", 1], "other_size")
    graph["42"] = _save("41", "other_size")
    result = comfy.run(graph)
    assert result.status == "success", result.error_text()
    reports = {node: "\n".join(out.get("text", [])) for node, out in result.outputs.items()}

    for i, (name, (_, boxes, _)) in enumerate(CASES.items()):
        source = np.asarray(Image.open(comfy.input_dir / f"mask_{name}.png").convert("RGB")).astype(np.int16)
        out = _saved(result, name)
        assert out.shape == source.shape, name  # the input's size, not the edit's 128x128
        keep = _outside(source.shape[:2], boxes)
        assert np.array_equal(out[keep], source[keep]), name
        inside = ~_outside(source.shape[:2], boxes, reach=0)
        assert np.abs(out[inside] - source[inside]).mean() > 2, name  # the transparent part (MASK 1) was edited
        report = reports[f"{11 + 3 * i}"]
        assert "masked edit (crop_and_stitch, MASK 1 = edit)" in report and "edited at 128x128" in report, report
        assert "feather 16 px" in report and "crop x " in report and "output 768x512" in report, report
    assert "every painted pixel is in this one crop" in reports["17"]
    assert "mask box x 0..680, y 0..470" in reports["17"]  # both regions, from the border
    soft = _saved(result, "soft")[320:380, 120:180]  # half-transparent: the result lies between input and edit
    assert (
        np.abs(soft - np.asarray(Image.open(comfy.input_dir / "mask_soft.png").convert("RGB"))[320:380, 120:180]).mean()
        > 0
    )
    other = _saved(result, "other_size")
    source = np.asarray(Image.open(comfy.input_dir / "mask_object.png").convert("RGB")).astype(np.int16)
    keep = _outside(source.shape[:2], [(300, 200, 420, 300)], reach=FEATHER + 2)  # stretched 2x, bilinear edge
    assert other.shape == source.shape and np.array_equal(other[keep], source[keep])
    assert "mask: 384x256 stretched to the picture's 768x512" in reports["41"]


def test_full_mask_is_the_unmasked_edit_and_an_empty_mask_says_nothing_to_edit(comfy):
    small = "mask_full_128.png"
    Image.open(SAMPLE).convert("RGB").resize((128, 128)).save(comfy.input_dir / small)
    graph = {
        "1": loader(EDIT),
        "2": {"class_type": "LoadImage", "inputs": {"image": small}},
        "3": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 128}},
        "4": _edit(["2", 0], ["3", 0], "full"),
        "5": _save("4", "full"),
        "6": _edit(["2", 0], None, "plain"),
        "7": _save("6", "plain"),
        "8": _edit(["2", 0], ["2", 1], "mode_off", mask_mode="off"),  # a mask with mode off: ignored, said so
        "9": _save("8", "mode_off"),
    }
    result = comfy.run(graph)
    assert result.status == "success", result.error_text()
    plain = _saved(result, "plain")
    assert plain.shape == (128, 128, 3)
    assert np.array_equal(_saved(result, "full"), plain)
    assert np.array_equal(_saved(result, "mode_off"), plain)
    assert "mask_mode is off" in "\n".join(result.outputs["8"]["text"])

    # Load Image of a picture without alpha gives an empty 64x64 mask: nothing to edit, and the fix.
    empty = {"1": loader(EDIT), "2": {"class_type": "LoadImage", "inputs": {"image": small}}}
    empty["3"] = _edit(["2", 0], ["2", 1], "empty")
    empty["4"] = _save("3", "empty")
    failed = comfy.run(empty)
    assert failed.status == "error"
    message = failed.error["exception_message"]
    assert "mask is empty" in message and "nothing to edit" in message and "mask_mode to off" in message
    empty["3"]["inputs"]["mask_mode"] = "off"  # the fix it names; the server keeps serving
    assert comfy.run(empty).status == "success"


def test_masked_preset_changes_the_sun_only(comfy):
    """The bundled masked preset: Load Image's alpha (the sun transparent) is the mask; the rest is untouched."""
    from conftest import REPO, load_json

    from tools.presets import MASKED_SAMPLE_IMAGE, on_tiny_models

    result = comfy.run(on_tiny_models(load_json(REPO / "tests" / "workflows" / "qwenfit_edit_masked.api.json")))
    assert result.status == "success", result.error_text()
    source = Image.open(comfy.input_dir / MASKED_SAMPLE_IMAGE)
    out = np.asarray(Image.open(result.files[0]).convert("RGB")).astype(np.int16)
    rgb = np.asarray(source.convert("RGB")).astype(np.int16)
    transparent = np.asarray(source.getchannel("A")) == 0
    assert out.shape == rgb.shape
    ys, xs = np.nonzero(transparent)
    keep = _outside(rgb.shape[:2], [(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)])
    assert np.array_equal(out[keep], rgb[keep]) and np.abs(out[transparent] - rgb[transparent]).mean() > 2


def test_plan_preview_route_plans_the_crop_for_a_masked_edit(comfy):
    query = {"model": EDIT, "job": "edit", "aspect": "3.0"}
    plain = comfy.get("/qwenfit/plan_preview", **query).json()
    masked = comfy.get("/qwenfit/plan_preview", **query, masked="1").json()
    assert plain["ok"] and masked["ok"], (plain, masked)
    assert (plain["job"]["width"], plain["job"]["height"]) != (1024, 1024)
    assert (masked["job"]["width"], masked["job"]["height"]) == (1024, 1024)
    assert any(note.startswith("masked edit: planned for the crop") for note in masked["notes"])
    assert not any(note.startswith("masked edit") for note in plain["notes"])
