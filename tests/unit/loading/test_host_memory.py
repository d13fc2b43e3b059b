"""Weights left in the model files on a host short of RAM: the same images, less host memory.

The text encoder's units and the modulation layers are read from the files at each use when the
host budget is "minimal"; the outputs must equal the all-in-memory load exactly (same arithmetic).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_files import FOLDER, LAYOUTS, MODELS, TE_FP8, split_files

from optim import DiffusersFolder, EditJob, LayeredJob, LoadRequest, load_pipeline, run_edit, run_layered
from optim.files.file_tensors import holds_no_memory
from optim.planning.host_memory import FILES, MEMORY
from optim.settings import OffloadSettings, PrecisionSettings

GIB = 1024**3
IMAGE = Image.new("RGB", (96, 64), (200, 80, 40))


def load(source, host_budget: str, **precision):
    offload = OffloadSettings(host_budget=host_budget)
    return load_pipeline(LoadRequest(source, offload=offload, precision=PrecisionSettings(**precision)))


def edit(loaded, prompt: str = "snow") -> torch.Tensor:
    return run_edit(loaded, [IMAGE], EditJob(prompt=prompt, steps=2, seed=1, width=64, height=64)).image


@pytest.mark.parametrize(
    "source",
    [
        DiffusersFolder(MODELS / "diffusers" / FOLDER["edit-2511"]),
        split_files(LAYOUTS[1][0], "edit-2509", TE_FP8),  # fp8 scaled transformer and text encoder
        split_files(LAYOUTS[3][0], "edit-2511"),  # fp8 mixed transformer
    ],
    ids=["folder-2511", "fp8-scaled-2509", "fp8-mixed-2511"],
)
def test_weights_read_from_files_give_the_same_image(source) -> None:
    in_memory = load(source, "unlimited")
    expected = edit(in_memory)
    assert (in_memory.host.text_encoder, in_memory.host.modulation) == (MEMORY, MEMORY)
    in_files = load(source, "minimal")
    assert (in_files.host.text_encoder, in_files.host.modulation) == (FILES, FILES)
    engine = in_files.engine
    assert engine.text.reads_files and engine.modulation.reads_files
    assert engine.modulation.host_bytes == 0 and engine.text.streamer.host_bytes == 0
    unit_weights = list(engine.text.units[-1].parameters())
    assert all(map(holds_no_memory, unit_weights))  # nothing of the text encoder's units waits in memory
    assert torch.equal(edit(in_files), expected)
    # A second prompt reads the files again; the result still matches.
    assert torch.equal(edit(in_files, "rain"), edit(in_memory, "rain"))
    assert "read from the model files" in engine.plan.describe()


def test_layered_reads_modulation_and_text_from_files() -> None:
    source = DiffusersFolder(MODELS / "diffusers" / FOLDER["layered"])
    image = Image.new("RGBA", (64, 64), (20, 120, 200, 255))
    job = LayeredJob(prompt="a poster", layers=2, resolution=640, steps=2, seed=3)
    expected = run_layered(load(source, "unlimited"), image, job)
    got = run_layered(load(source, "minimal"), image, job)
    assert torch.equal(got.rgb, expected.rgb) and torch.equal(got.alpha, expected.alpha)


def test_quantized_precision_keeps_weights_in_memory() -> None:
    """int8 is made on load: there is no copy on disk to read back, so the plan keeps it."""
    loaded = load(DiffusersFolder(MODELS / "diffusers" / FOLDER["edit-2509"]), "minimal", transformer="int8")
    assert loaded.host.modulation == MEMORY and loaded.host.text_encoder == FILES
    assert not loaded.engine.modulation.reads_files
