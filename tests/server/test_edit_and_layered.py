"""InstructEdit and LayeredDecompose as users drive them, through the real server on tiny models."""

from __future__ import annotations

import numpy as np
import psutil
import pytest
from conftest import SAMPLE
from graphs import edit_graph, layered_graph
from PIL import Image


def report_of(result) -> str:
    return "\n".join(t for out in result.outputs.values() for t in out.get("text", []))


@pytest.mark.parametrize("refs, batch_first", [(1, False), (2, True), (3, False)], ids=["1", "2-as-batch", "3"])
def test_edit_with_one_two_three_references(comfy, refs, batch_first):
    result = comfy.run(edit_graph(extra_refs=0 if batch_first else refs - 1, batch_first=batch_first))
    assert result.status == "success", result.error_text()
    assert len(result.files) == 1 and Image.open(result.files[0]).size == (128, 128)
    report = report_of(result)
    assert f"{refs} reference(s)" in report
    assert "reference 1: 768x512 -> " in report and "(VAE)" in report


def test_four_references_are_refused(comfy):
    result = comfy.run(edit_graph(extra_refs=2, batch_first=True))
    assert result.status == "error" and "1 to 3 reference images, got 4" in result.error["exception_message"]


@pytest.mark.parametrize(
    "width, height, expected",
    [(0, 0, (1248, 832)), (192, 128, (192, 128))],
    ids=["auto-1MP-first-reference", "explicit"],
)
def test_edit_output_size_options(comfy, width, height, expected):
    result = comfy.run(edit_graph(width=width, height=height, steps=2))
    assert result.status == "success", result.error_text()
    assert Image.open(result.files[0]).size == expected


def test_same_seed_same_image_other_seed_other_image(comfy):
    def pixels(seed):
        result = comfy.run(edit_graph(seed=seed))
        assert result.status == "success", result.error_text()
        return np.asarray(Image.open(result.files[0]))

    first, again, other = pixels(11), pixels(11), pixels(12)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    "layers, resolution, prompt",
    # Each layer count, each resolution and both caption modes at least once (10 layers at 1024 alone took
    # over two minutes of the suite's CPU time, and tests nothing the others do not).
    [
        (1, "640", "a red house"),
        (1, "1024", ""),
        (4, "1024", "a red house"),
        (10, "640", ""),
    ],
    ids=lambda v: str(v) if v != "" else "auto-caption",
)
def test_layered_layer_counts_and_resolutions(comfy, layers, resolution, prompt):
    result = comfy.run(layered_graph(layers, resolution, prompt, steps=2), timeout=900)
    assert result.status == "success", result.error_text()
    sizes = {Image.open(f).size for f in result.files}
    assert len(result.files) == layers and len(sizes) == 1
    width, height = sizes.pop()
    assert abs(width * height - int(resolution) ** 2) / int(resolution) ** 2 < 0.1
    assert ("auto-captioned" in report_of(result)) == (prompt == "")


def test_psd_export_layers_names_order_and_no_overwrite(comfy):
    from psd_tools import PSDImage

    first = comfy.run(layered_graph(3, "640", "a house", save_psd=True, prefix="QwenFit/psd-check"))
    assert first.status == "success", first.error_text()
    psds = sorted((comfy.output_dir / "QwenFit").glob("psd-check_*.psd"))
    assert [p.name for p in psds] == ["psd-check_00001.psd"]
    before = psds[0].read_bytes()
    psd = PSDImage.open(psds[0])
    assert [layer.name for layer in psd] == ["Layer 1 (bottom)", "Layer 2", "Layer 3 (top)"]
    saved = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(first.files)]
    for layer, png in zip(psd, saved, strict=True):  # same pixels, same order (SaveImage truncates, we round)
        difference = np.abs(np.asarray(layer.topil().convert("RGB"), dtype=np.int16) - png.astype(np.int16))
        assert difference.max() <= 1
    again = layered_graph(3, "640", "a house", save_psd=True, prefix="QwenFit/psd-check")
    again["3"]["inputs"]["seed"] = 10  # identical inputs would be served from ComfyUI's cache
    second = comfy.run(again)
    assert second.status == "success", second.error_text()
    assert len(list((comfy.output_dir / "QwenFit").glob("psd-check_*.psd"))) == 2
    assert psds[0].read_bytes() == before  # the first file is untouched


def test_layered_refuses_a_batch_and_a_bad_resolution(comfy):
    graph = layered_graph(2, "640", "x")
    graph["5"] = {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["2", 0]}}
    graph["3"]["inputs"]["image"] = ["5", 0]
    result = comfy.run(graph)
    assert result.status == "error" and "takes one image, got a batch of 2" in result.error["exception_message"]
    result = comfy.run(layered_graph(2, "800", "x"))
    assert result.status in ("error", "invalid") and "800" in result.error_text()
    for layers in (0, 11):
        result = comfy.run(layered_graph(layers, "640", "x"))
        assert result.status == "invalid" and "layers" in result.error_text()


@pytest.mark.parametrize(
    "size, words",
    [((1, 1), "from 8 to 8192 pixels"), ((12000, 16), "from 8 to 8192 pixels")],
    ids=["1-pixel", "12000-pixel"],
)
def test_extreme_image_sizes_are_refused_with_the_limit(comfy, size, words):
    name = f"extreme_{size[0]}x{size[1]}.png"
    Image.new("RGB", size, (120, 30, 200)).save(comfy.input_dir / name)
    result = comfy.run(edit_graph(image=name))
    assert result.status == "error" and words in result.error["exception_message"]


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_inputs_work(comfy, mode):
    name = f"input_{mode}.png"
    Image.open(SAMPLE).convert(mode).save(comfy.input_dir / name)
    result = comfy.run(edit_graph(image=name, steps=2))
    assert result.status == "success", result.error_text()


def test_cancel_mid_run_leaves_the_server_usable_and_memory_at_baseline(comfy):
    server = psutil.Process(comfy.process.pid)
    warm = comfy.run(layered_graph(2, "640", "x", steps=2))
    assert warm.status == "success", warm.error_text()
    baseline = server.memory_info().rss

    def cancel_after_first_step(message):
        if message.get("type") == "progress" and message["data"].get("value") == 1:
            comfy.interrupt()

    result = comfy.run(layered_graph(2, "640", "x", steps=40), on_event=cancel_after_first_step)
    assert result.status == "interrupted"
    steps_run = [e["data"]["value"] for e in result.events if e["type"] == "progress"]
    assert max(steps_run) <= 2  # stopped within one step of the cancel
    after = comfy.run(layered_graph(2, "640", "x", steps=2))
    assert after.status == "success", after.error_text()
    assert server.memory_info().rss - baseline < 300 * 2**20


def test_one_step_with_a_terminal_shift_is_refused_not_nan(comfy):
    result = comfy.run(edit_graph(steps=1))
    assert result.status == "error" and "1 step is not possible" in result.error["exception_message"]
