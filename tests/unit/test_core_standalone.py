"""optim/ is a plain library: it imports and runs without ComfyUI, and matches diffusers exactly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from comfy_host import read_env
from conftest import REPO, SAMPLE
from PIL import Image

MODELS = os.path.join(read_env()["QWENFIT_MODELS"], "diffusers")


def test_optim_imports_without_comfyui():
    code = (
        "import sys, optim\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'nodes'))\n"
        "assert not leaked, leaked\n"
        "print(len(optim.__all__))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 10


def test_pack_init_registers_only_through_the_v3_entrypoint():
    """No NODE_CLASS_MAPPINGS (it would hide the V3 entrypoint); importable outside ComfyUI."""
    import ast
    import importlib.util

    tree = ast.parse((REPO / "__init__.py").read_text())
    assigned = {
        t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
    }
    assert "NODE_CLASS_MAPPINGS" not in assigned and "WEB_DIRECTORY" in assigned
    spec = importlib.util.spec_from_file_location(
        "qwenfit_pack_probe", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.WEB_DIRECTORY == "./web" and not hasattr(module, "comfy_entrypoint")


def test_listing_and_resolving_model_folders(tmp_path):
    from optim import QwenFitError, list_pipeline_folders, resolve_pipeline_folder

    (tmp_path / "org" / "Nested").mkdir(parents=True)
    (tmp_path / "org" / "Nested" / "model_index.json").write_text("{}")
    (tmp_path / "Top").mkdir()
    (tmp_path / "Top" / "model_index.json").write_text("{}")
    (tmp_path / "not-a-model").mkdir()
    assert list_pipeline_folders([tmp_path]) == ["Top", "org/Nested"]
    assert resolve_pipeline_folder([tmp_path], "org/Nested") == tmp_path / "org" / "Nested"
    for name in ("../Top", "/etc", "org/../Top", "not-a-model"):
        with pytest.raises(QwenFitError, match="was not found"):
            resolve_pipeline_folder([tmp_path], name)


def test_variant_detection_and_mismatched_parts(tmp_path):
    from pathlib import Path

    from optim import QwenFitError, Variant, inspect_folder

    models = Path(MODELS)
    assert inspect_folder(models / "qwenfit-tiny-edit-2509")[0] is Variant.EDIT_2509
    assert inspect_folder(models / "qwenfit-tiny-edit-2511")[0] is Variant.EDIT_2511
    assert inspect_folder(models / "qwenfit-tiny-layered")[0] is Variant.LAYERED
    mixed = tmp_path / "mixed"
    shutil.copytree(models / "qwenfit-tiny-edit-2509", mixed)
    shutil.rmtree(mixed / "vae")
    shutil.copytree(models / "qwenfit-tiny-layered" / "vae", mixed / "vae")
    with pytest.raises(QwenFitError, match="4-channel .Layered. but its transformer is edit-2509"):
        inspect_folder(mixed)


def test_pickle_only_weights_are_refused_unread(tmp_path):
    from pathlib import Path

    from optim import QwenFitError, inspect_folder

    folder = tmp_path / "pickled"
    shutil.copytree(Path(MODELS) / "qwenfit-tiny-edit-2509", folder)
    for f in (folder / "transformer").glob("*.safetensors"):
        f.unlink()
    (folder / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(QwenFitError, match="never loads"):
        inspect_folder(folder)


def test_settings_refuse_unknown_choices():
    from optim import OffloadSettings, PrecisionSettings, QwenFitError, VaeSettings

    for make in (
        lambda: PrecisionSettings(transformer="int3"),
        lambda: OffloadSettings(mode="disk"),
        lambda: VaeSettings(tiling="maybe"),
    ):
        with pytest.raises(QwenFitError, match="pick one of"):
            make()
    assert hash(PrecisionSettings()) == hash(PrecisionSettings())  # usable as cache keys


def fresh_copy(pipeline):
    """Move every weight of a diffusers-loaded pipeline into freshly allocated memory.

    diffusers leaves weights inside the memory-mapped file, at arbitrary alignment, and CPU
    matmul kernels round differently by alignment (about 1e-7). Copies make the reference's
    arithmetic the same as ours, so equality can be exact.
    """
    with torch.no_grad():
        for part in ("transformer", "text_encoder", "vae"):
            for tensor in getattr(pipeline, part).parameters():
                tensor.data = tensor.data.clone()
    return pipeline


def test_edit_equals_plain_diffusers_call():
    """The core adds nothing to the arithmetic: same seed, same inputs, same pixels."""
    from pathlib import Path

    from diffusers import QwenImageEditPlusPipeline

    from optim import DiffusersFolder, EditJob, LoadRequest, load_pipeline, run_edit

    folder = Path(MODELS) / "qwenfit-tiny-edit-2511"
    image = Image.open(SAMPLE).convert("RGB")
    loaded = load_pipeline(LoadRequest(source=DiffusersFolder(folder)))
    steps = []
    ours = run_edit(
        loaded,
        [image],
        EditJob(prompt="snow", steps=2, seed=7, width=128, height=96),
        on_step=lambda done, total: steps.append(done),
    )
    reference = fresh_copy(
        QwenImageEditPlusPipeline.from_pretrained(str(folder), local_files_only=True, torch_dtype=torch.float32)
    )
    expected = reference(
        image=[image],
        prompt="snow",
        negative_prompt=" ",
        true_cfg_scale=4.0,
        num_inference_steps=2,
        width=128,
        height=96,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).images
    assert steps == [1, 2]
    assert tuple(ours.image.shape) == (1, 96, 128, 3)
    np.testing.assert_array_equal(ours.image.numpy(), expected.astype(np.float32))
