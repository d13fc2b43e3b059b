"""A corpus of bad inputs, each sent the way it reaches the pack: through the real ComfyUI server (API
graphs, model files in its folders, its /qwenfit/ routes), or through the core where an API graph cannot
carry it (tensors with NaN or no images). Every one must get a message that names the fix, and the server
must keep serving: after each bad prompt a loader prompt runs, and after each group a whole edit does.

The cases live in module-level lists with ids, so the corpus counts itself:
``pytest --collect-only -q tests/test_bad_input_corpus.py | wc -l``. A case that exposes a bug in the
pack is marked ``xfail(strict=True)`` with the bug until it is fixed (the bugs this corpus found, in the
safetensors header checks, the history route, the loader's validation and non-finite CFG/LoRA values,
are fixed).
"""

from __future__ import annotations

import itertools
import json
import pickle
import random
import shutil
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import torch
import websocket
from comfy_host import PromptResult
from conftest import SAMPLE
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_files import MODELS, TE_BF16, VAE

EDIT = "qwenfit_tiny_edit_2509_bf16.safetensors"
LAYERED = "qwenfit_tiny_layered_bf16.safetensors"
EDIT_VAE = VAE["edit-2509"]
LORA = "qwenfit_tiny_Lightning-4steps_kohya.safetensors"
NAN = float("nan")
# The words of every "this file is damaged" message: what is wrong and what to do.
CORRUPT = ("not a readable safetensors file", "download it again")
# Which loader input picks a file from which model folder.
SLOT = {"diffusion_models": "model", "text_encoders": "text_encoder", "vae": "vae", "loras": "lora"}

# Fresh numbers for seeds and unused widget values, so ComfyUI runs a node instead of answering from its cache.
_fresh = itertools.count(1)


def xfail(bug: str | None) -> tuple:
    """Marks for a case whose ``bug`` is still open (none are: the ones this corpus found are fixed)."""
    return () if bug is None else (pytest.mark.xfail(strict=True, reason=bug),)


# ---- prompts ---------------------------------------------------------------------------------------


def queue(comfy, graph: dict, timeout: float = 300) -> PromptResult:
    """``comfy.run`` for graphs that may hold NaN: requests refuses to encode it, ComfyUI's parser takes it."""
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://127.0.0.1:{comfy.port}/ws?clientId={client_id}", timeout=timeout)
    try:
        body = json.dumps({"prompt": graph, "client_id": client_id})
        response = requests.post(
            f"{comfy.url}/prompt", data=body, headers={"Content-Type": "application/json"}, timeout=30
        )
        if response.status_code != 200:
            return PromptResult(None, "invalid", error=response.json())
        prompt_id = response.json()["prompt_id"]
        status, error, events = comfy._follow(ws, prompt_id, timeout, None)
    finally:
        ws.close()
    outputs = comfy.get(f"/history/{prompt_id}").json().get(prompt_id, {}).get("outputs", {})
    return PromptResult(prompt_id, status, error=error, outputs=outputs, events=events)


def loader_graph(model: str = EDIT, **inputs) -> dict:
    """The loader alone, its plan shown as text: enough for every problem the loader must refuse."""
    return {
        "1": {"class_type": "QwenFitOptimizedLoader", "inputs": {"model": model, "variant": "auto", **inputs}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    }


def edit_graph(model: str = EDIT, image: str | None = None, **edit_inputs) -> dict:
    """Loader -> InstructEdit (128x128, 2 steps, a fresh seed) -> SaveImage."""
    inputs = {
        "pipeline": ["1", 0],
        "image": ["2", 0],
        "prompt": "make it blue",
        "negative_prompt": " ",
        "true_cfg_scale": 4.0,
        "steps": 2,
        "seed": next(_fresh),
        "width": 128,
        "height": 128,
        **edit_inputs,
    }
    return {
        "1": {"class_type": "QwenFitOptimizedLoader", "inputs": {"model": model, "variant": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image or SAMPLE.name}},
        "3": {"class_type": "QwenFitInstructEdit", "inputs": inputs},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "corpus/edit"}},
    }


def layered_graph(model: str = LAYERED, **layered_inputs) -> dict:
    """Loader -> LayeredDecompose (1 layer, 640, 2 steps, a fresh seed) -> SaveImage."""
    inputs = {
        "pipeline": ["1", 0],
        "image": ["2", 0],
        "layers": 1,
        "resolution": "640",
        "prompt": "a house",
        "negative_prompt": " ",
        "true_cfg_scale": 4.0,
        "steps": 2,
        "seed": next(_fresh),
        **layered_inputs,
    }
    return {
        "1": {"class_type": "QwenFitOptimizedLoader", "inputs": {"model": model, "variant": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": SAMPLE.name}},
        "3": {"class_type": "QwenFitLayeredDecompose", "inputs": inputs},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "corpus/layers"}},
    }


def message(result: PromptResult) -> str:
    return result.error.get("exception_message") or result.error_text()


def assert_refused(result: PromptResult, words) -> None:
    """Refused (by ComfyUI's validation or by the pack) with every word; a tuple among ``words`` means any
    one of them (ComfyUI's own check or ours, whichever answers). An error raised by a QwenFit node must be
    a QwenFitError (a message for the user), not a stray exception with a traceback."""
    assert result.status in ("error", "invalid"), f"accepted ({result.status}): {result.error_text()}"
    text = message(result)
    for word in words:
        alternatives = word if isinstance(word, tuple) else (word,)
        assert any(w in text for w in alternatives), (word, text)
    if result.status == "error" and str(result.error.get("node_type", "")).startswith("QwenFit"):
        assert str(result.error.get("exception_type", "")).endswith("QwenFitError"), result.error_text()


def assert_next_prompt_runs(comfy) -> None:
    """The prompt after a bad one runs: the loader plans the tiny Edit model (loading it again if the bad
    prompt replaced it). A fresh lora_strength, unused with lora none, keeps ComfyUI from using its cache."""
    assert comfy.get("/qwenfit/memory").status_code == 200
    result = queue(comfy, loader_graph(lora_strength=1.0 + next(_fresh) % 300 / 100))
    assert result.status == "success", message(result)
    assert "QwenFit plan" in "".join(result.outputs["2"]["text"])


def assert_an_edit_runs(comfy) -> None:
    result = comfy.run(edit_graph())
    assert result.status == "success", result.error_text()
    assert len(result.files) == 1 and Image.open(result.files[0]).size == (128, 128)


# ---- files in the model folders --------------------------------------------------------------------


def safetensors_bytes(header: str | bytes, data: bytes = b"") -> bytes:
    """A file in the safetensors layout: header length (little-endian u64), header, data."""
    header = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(header)) + header + data


def _random_bytes(_: bytes) -> bytes:
    return random.Random(4).randbytes(4096)


def _first_half(source: bytes) -> bytes:
    return source[: len(source) // 2]


def _header_claims_twice_the_file(source: bytes) -> bytes:
    return struct.pack("<Q", 2 * len(source)) + source[8:]


def _header(text: str | bytes, data: bytes = b"") -> Callable[[bytes], bytes]:
    return lambda _: safetensors_bytes(text, data)


@dataclass(frozen=True)
class BadFile:
    """A damaged file in a model folder; ``make`` turns a good tiny file of that folder into it."""

    id: str
    folder: str
    make: Callable[[bytes], bytes]
    words: tuple[str, ...] = CORRUPT
    bug: str | None = None

    @property
    def name(self) -> str:
        return f"corpus_{self.id.replace('-', '_')}.safetensors"


BAD_FILES = [
    BadFile("random-bytes-as-transformer", "diffusion_models", _random_bytes),
    BadFile("first-half-of-a-transformer", "diffusion_models", _first_half),
    BadFile("header-longer-than-the-transformer", "diffusion_models", _header_claims_twice_the_file),
    BadFile("header-is-a-json-list", "diffusion_models", _header("[1, 2]")),
    BadFile("tensor-entry-is-null", "diffusion_models", _header('{"w": null}')),
    BadFile(
        "unknown-dtype",
        "diffusion_models",
        _header('{"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}}', b"\0"),
    ),
    BadFile(
        "no-tensors",
        "diffusion_models",
        _header("{}"),
        ("an unknown model, not a Qwen-Image transformer", "Pick a qwen_image_edit"),
    ),
    BadFile(
        "header-nested-100k-deep",
        "diffusion_models",
        _header("[" * 100_000 + "]" * 100_000),
    ),
    BadFile(
        "metadata-is-a-string",
        "diffusion_models",
        _header('{"__metadata__": "abc"}'),
    ),
    BadFile(
        "metadata-value-is-a-number",
        "diffusion_models",
        _header('{"__metadata__": {"_quantization_metadata": 5}}'),
    ),
    BadFile(
        "shape-beyond-int64",
        "diffusion_models",
        _header('{"w": {"dtype": "F32", "shape": [1180591620717411303424], "data_offsets": [0, 4]}}', b"\0" * 4),
    ),
    BadFile(
        "data-offset-infinite",
        "diffusion_models",
        _header('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, Infinity]}}', b"\0" * 4),
    ),
    BadFile("random-bytes-as-text-encoder", "text_encoders", _random_bytes),
    BadFile("first-half-of-a-text-encoder", "text_encoders", _first_half),
    BadFile("empty-text-encoder", "text_encoders", lambda _: b""),
    BadFile("header-longer-than-the-text-encoder", "text_encoders", _header_claims_twice_the_file),
    BadFile("random-bytes-as-vae", "vae", _random_bytes),
    BadFile("first-half-of-a-vae", "vae", _first_half),
    BadFile("header-not-utf8", "vae", _header(bytes(range(128, 256)))),
    BadFile("header-length-zero", "vae", lambda _: struct.pack("<Q", 0)),
    BadFile("random-bytes-as-lora", "loras", _random_bytes),
    BadFile("first-half-of-a-lora", "loras", _first_half),
]
GOOD_SOURCE = {
    "diffusion_models": MODELS / "diffusion_models" / EDIT,
    "text_encoders": MODELS / "text_encoders" / TE_BF16,
    "vae": MODELS / "vae" / EDIT_VAE,
    "loras": MODELS / "loras" / LORA,
}


class MakesMarker:
    """Unpickling this creates ``path``: the proof that something unpickled a file it should have refused."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@dataclass(frozen=True)
class PickleCase:
    id: str
    folder: str
    name: str
    words: tuple[str, ...]


NEVER = ("never loads pickles", ".safetensors")
PICKLES = [
    PickleCase("pt-as-transformer", "diffusion_models", "corpus_evil.pt", NEVER),
    PickleCase("pth-as-transformer", "diffusion_models", "corpus_evil.pth", NEVER),
    PickleCase("bin-as-transformer", "diffusion_models", "corpus_evil.bin", NEVER),
    PickleCase("pkl-as-transformer", "diffusion_models", "corpus_evil.pkl", NEVER),
    PickleCase("upper-case-CKPT-as-transformer", "diffusion_models", "corpus_evil.CKPT", NEVER),
    PickleCase("ckpt-as-text-encoder", "text_encoders", "corpus_evil.ckpt", NEVER),
    PickleCase("pt-as-vae", "vae", "corpus_evil.pt", NEVER),
    PickleCase("bin-as-lora", "loras", "corpus_evil.bin", NEVER),
    PickleCase("pickle-named-safetensors-as-transformer", "diffusion_models", "corpus_pickled.safetensors", CORRUPT),
    PickleCase("pickle-named-safetensors-as-text-encoder", "text_encoders", "corpus_pickled.safetensors", CORRUPT),
    PickleCase("pickle-named-safetensors-as-vae", "vae", "corpus_pickled.safetensors", CORRUPT),
    PickleCase("pickle-named-safetensors-as-lora", "loras", "corpus_pickled.safetensors", CORRUPT),
    PickleCase("torch-save-named-safetensors", "diffusion_models", "corpus_torch_saved.safetensors", CORRUPT),
    PickleCase("diffusers-folder-with-a-bin-transformer", "diffusers", "corpus-pickled-folder", ("never loads",)),
]


def _without_block_1(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if not k.startswith("transformer_blocks.1.")}


def _nan_weights(path: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(path))
    tensors["img_in.weight"] = torch.full_like(tensors["img_in.weight"], float("nan"))
    return tensors


@dataclass
class Corpus:
    marker: Path  # created if anything ever unpickles one of the pickles


@pytest.fixture(scope="module")
def corpus_files(comfy, tmp_path_factory) -> Corpus:
    """Every bad file in the test host's model folders, under corpus_ names that no 'auto' choice picks;
    all removed when the module is done."""
    scratch = tmp_path_factory.mktemp("corpus")
    models = comfy.base / "models"
    written: list[Path] = []

    def put(folder: str, name: str, data: bytes) -> None:
        path = models / folder / name
        assert not path.exists(), path
        path.write_bytes(data)
        written.append(path)

    for case in BAD_FILES:
        put(case.folder, case.name, case.make(GOOD_SOURCE[case.folder].read_bytes()))

    # Pickles whose loading would create a marker file; first proven live on a control file.
    control = scratch / "control.marker"
    pickle.loads(pickle.dumps(MakesMarker(control)))  # noqa: S301 (our own payload, aimed at a scratch file)
    assert control.exists()
    marker = scratch / "unpickled.marker"
    payload = pickle.dumps({"state_dict": MakesMarker(marker)})
    for case in PICKLES:
        if case.folder == "diffusers":
            continue
        if case.name.startswith("corpus_torch_saved"):
            target = scratch / "torch_saved.pt"
            torch.save({"state_dict": MakesMarker(marker)}, target)
            put(case.folder, case.name, target.read_bytes())
        else:
            put(case.folder, case.name, payload)
    folder = models / "diffusers" / "corpus-pickled-folder"
    source = MODELS / "diffusers" / "qwenfit-tiny-edit-2509"
    (folder / "transformer").mkdir(parents=True)
    shutil.copyfile(source / "model_index.json", folder / "model_index.json")
    shutil.copyfile(source / "transformer" / "config.json", folder / "transformer" / "config.json")
    (folder / "transformer" / "diffusion_pytorch_model.bin").write_bytes(payload)
    for part in ("vae", "text_encoder", "tokenizer", "scheduler", "processor"):
        (folder / part).symlink_to(source / part, target_is_directory=True)

    # Files of the wrong kind, or damaged inside well-formed tensors.
    copies = {
        ("diffusion_models", "corpus_te_as_transformer.safetensors"): GOOD_SOURCE["text_encoders"],
        ("text_encoders", "corpus_transformer_as_te.safetensors"): GOOD_SOURCE["diffusion_models"],
        ("text_encoders", "corpus_vae_as_te.safetensors"): GOOD_SOURCE["vae"],
        ("vae", "corpus_transformer_as_vae.safetensors"): GOOD_SOURCE["diffusion_models"],
        ("vae", "corpus_te_as_vae.safetensors"): GOOD_SOURCE["text_encoders"],
    }
    for (kind, name), good in copies.items():
        put(kind, name, good.read_bytes())
    built = {
        ("diffusion_models", "corpus_flux_like.safetensors"): {
            "double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4),
            "img_in.weight": torch.zeros(4, 4),
        },
        ("vae", "corpus_sd_vae_like.safetensors"): {"encoder.down.0.block.0.conv1.weight": torch.zeros(4, 4, 3, 3)},
        ("loras", "corpus_lora_for_another_model.safetensors"): {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
        },
        ("diffusion_models", "corpus_one_block_missing.safetensors"): _without_block_1(GOOD_SOURCE["diffusion_models"]),
        ("diffusion_models", "corpus_nan_weights.safetensors"): _nan_weights(GOOD_SOURCE["diffusion_models"]),
    }
    for (kind, name), tensors in built.items():
        target = scratch / name
        save_file(tensors, str(target))
        put(kind, name, target.read_bytes())

    yield Corpus(marker=marker)
    for path in written:
        path.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=xfail(c.bug)) for c in BAD_FILES])
def test_damaged_file_is_refused_with_its_name_and_the_fix(comfy, corpus_files, case):
    result = queue(comfy, loader_graph(**{SLOT[case.folder]: case.name}))
    assert_refused(result, (case.name, *case.words))
    assert str(comfy.base) not in message(result) and str(comfy.models) not in message(result)
    assert_next_prompt_runs(comfy)


def preview_inputs(folder: str, name: str) -> dict:
    return {"model": name} if folder == "diffusion_models" else {"model": EDIT, SLOT[folder]: name}


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=xfail(c.bug)) for c in BAD_FILES if c.folder != "loras"]
)  # the preview never opens a LoRA
def test_plan_preview_of_a_damaged_file_says_why(comfy, corpus_files, case):
    response = comfy.get("/qwenfit/plan_preview", **preview_inputs(case.folder, case.name))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["ok"] is False and case.name in data["error"], data
    assert all(word in data["error"] for word in case.words), data
    assert_no_paths(comfy, response)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in PICKLES])
def test_pickle_is_refused_and_never_unpickled(comfy, corpus_files, case):
    inputs = {"model": case.name} if case.folder == "diffusers" else {SLOT[case.folder]: case.name}
    result = queue(comfy, loader_graph(**inputs))
    assert_refused(result, (case.name, *case.words))
    assert not corpus_files.marker.exists(), "a pickle was unpickled"
    assert_next_prompt_runs(comfy)
    assert not corpus_files.marker.exists(), "a pickle was unpickled"


@pytest.mark.parametrize(
    "params, status",
    [
        pytest.param({"model": "corpus_evil.pt"}, 400, id="pickle-as-model"),
        pytest.param({"model": EDIT, "vae": "corpus_evil.pt"}, 400, id="pickle-as-vae"),
        pytest.param({"model": "corpus_pickled.safetensors"}, 200, id="pickle-named-safetensors"),
        pytest.param({"model": "corpus_torch_saved.safetensors"}, 200, id="torch-save-named-safetensors"),
        pytest.param({"model": "corpus-pickled-folder"}, 200, id="diffusers-folder-with-a-bin-transformer"),
    ],
)
def test_plan_preview_never_unpickles(comfy, corpus_files, params, status):
    response = comfy.get("/qwenfit/plan_preview", **params)
    assert response.status_code == status, response.text
    data = response.json()
    if status == 400:
        assert "never loads pickle files" in data["error"], data  # the loader never lists them
    else:
        assert data["ok"] is False and ("never loads" in data["error"] or "download it again" in data["error"]), data
    assert not corpus_files.marker.exists(), "a pickle was unpickled"
    assert_no_paths(comfy, response)


def test_an_edit_runs_after_the_damaged_files_and_pickles(comfy, corpus_files):
    assert_an_edit_runs(comfy)
    assert not corpus_files.marker.exists()


# ---- parts that do not belong together, models of the wrong family -----------------------------------

PARTS = [
    pytest.param(
        {"model": "corpus_te_as_transformer.safetensors"},
        ("is a Qwen2.5 text encoder (text_encoders), not a Qwen-Image transformer", "Pick a qwen_image_edit"),
        id="text-encoder-file-as-transformer",
    ),
    pytest.param(
        {"model": "corpus_flux_like.safetensors"},
        ("is a Flux transformer, not a Qwen-Image transformer", "Pick a qwen_image_edit"),
        id="flux-file-as-transformer",
    ),
    pytest.param(
        {"model": "corpus_one_block_missing.safetensors"},
        ("is a Qwen-Image transformer of an unknown size", "knows the 20B release only"),
        id="transformer-with-a-block-missing",
    ),
    pytest.param(
        {"text_encoder": "corpus_transformer_as_te.safetensors"},
        ("is a Qwen-Image transformer (diffusion_models), not the Qwen2.5-VL text encoder", "Pick qwen_2.5_vl_7b"),
        id="transformer-file-as-text-encoder",
    ),
    pytest.param(
        {"text_encoder": "corpus_vae_as_te.safetensors"},
        ("is a Wan/Qwen-Image VAE (vae), not the Qwen2.5-VL text encoder", "Pick qwen_2.5_vl_7b"),
        id="vae-file-as-text-encoder",
    ),
    pytest.param(
        {"vae": "corpus_transformer_as_vae.safetensors"},
        ("is a Qwen-Image transformer (diffusion_models), not the Qwen-Image VAE", "Pick qwen_image_vae"),
        id="transformer-file-as-vae",
    ),
    pytest.param(
        {"vae": "corpus_te_as_vae.safetensors"},
        ("is a Qwen2.5 text encoder (text_encoders), not the Qwen-Image VAE", "Pick qwen_image_vae"),
        id="text-encoder-file-as-vae",
    ),
    pytest.param(
        {"vae": "corpus_sd_vae_like.safetensors"},
        ("is a Stable Diffusion / Flux VAE, not the Qwen-Image VAE", "Pick qwen_image_vae"),
        id="sd-vae-as-vae",
    ),
    pytest.param(
        {"model": LAYERED, "vae": EDIT_VAE},
        ("is a 3-channel VAE", "pick qwen_image_layered_vae.safetensors"),
        id="layered-transformer-with-the-edit-vae",
    ),
    pytest.param(
        {"variant": "layered"},
        ("has no Layered weights", "variant=layered cannot apply"),
        id="edit-file-forced-to-layered",
    ),
    pytest.param(
        {"model": LAYERED, "variant": "edit-2509"},
        ("is layered by its weights", "Set variant to auto"),
        id="layered-file-forced-to-edit-2509",
    ),
    pytest.param(
        {"model": "qwenfit-tiny-edit-2509", "text_encoder": TE_BF16},
        ("brings its own text encoder and VAE", "set text_encoder and vae to auto"),
        id="diffusers-folder-with-a-separate-text-encoder",
    ),
    pytest.param(
        {"lora": "corpus_lora_for_another_model.safetensors"},
        ("changes no layer of this Qwen-Image transformer", "set lora to none"),
        id="lora-for-another-model",
    ),
]


@pytest.mark.parametrize("inputs, words", PARTS)
def test_parts_that_do_not_belong_together(comfy, corpus_files, inputs, words):
    result = queue(comfy, loader_graph(**inputs))
    assert_refused(result, words)
    assert_next_prompt_runs(comfy)


def test_an_edit_model_in_layered_decompose(comfy):
    result = queue(comfy, layered_graph(model=EDIT))
    assert_refused(result, ("LayeredDecompose needs Qwen-Image-Layered", "Load a Layered model"))
    assert_next_prompt_runs(comfy)


def test_weights_that_are_nan_give_no_black_image(comfy, corpus_files):
    """A well-formed file with NaN weights (a bad conversion) runs, and the NaN pixels are refused."""
    result = queue(comfy, edit_graph(model="corpus_nan_weights.safetensors"))
    assert_refused(result, ("invalid pixels (NaN or infinite)",))
    assert_next_prompt_runs(comfy)


# ---- images -------------------------------------------------------------------------------------------


def _solid_nan_image(graph: dict) -> dict:
    graph["5"] = {"class_type": "SolidMask", "inputs": {"value": NAN, "width": 64, "height": 64}}
    graph["6"] = {"class_type": "MaskToImage", "inputs": {"mask": ["5", 0]}}
    graph["3"]["inputs"]["image"] = ["6", 0]
    return graph


def _empty_batch(graph: dict) -> dict:
    graph["5"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": 0}}
    graph["3"]["inputs"]["image"] = ["5", 0]
    return graph


def _solid_nan_mask(graph: dict) -> dict:
    graph["5"] = {"class_type": "SolidMask", "inputs": {"value": NAN, "width": 64, "height": 64}}
    graph["3"]["inputs"]["mask"] = ["5", 0]
    return graph


IMAGE_GRAPHS = [
    # ComfyUI's range check lets NaN through (NaN compares false), so a NaN widget makes NaN pixels.
    pytest.param(
        lambda: _solid_nan_image(edit_graph()),
        ("image contains NaN or infinite values", "check the node that produced it"),
        id="nan-image-into-edit",
    ),
    pytest.param(
        lambda: _solid_nan_mask(layered_graph()),
        ("mask must be a finite", "connect the MASK output of Load Image"),
        id="nan-mask-into-layered",
    ),
    # No core node makes an empty batch (ImageFromBatch's length starts at 1): the core test below covers it.
    pytest.param(
        lambda: _empty_batch(edit_graph()),
        (("smaller than min of 1", "empty batch"),),
        id="empty-batch-from-image-from-batch",
    ),
]


@pytest.mark.parametrize("graph, words", IMAGE_GRAPHS)
def test_non_finite_pixels_through_the_server(comfy, graph, words):
    result = queue(comfy, graph())
    assert_refused(result, words)
    assert_next_prompt_runs(comfy)


@pytest.mark.parametrize("size", [(7, 64), (8193, 8)], ids=["7-pixels-wide", "8193-pixels-wide"])
def test_image_just_outside_the_size_limits(comfy, size):
    name = f"corpus_{size[0]}x{size[1]}.png"
    Image.new("RGB", size, (30, 120, 200)).save(comfy.input_dir / name)
    try:
        result = queue(comfy, edit_graph(image=name))
    finally:
        (comfy.input_dir / name).unlink()
    assert_refused(result, (f"is {size[0]}x{size[1]}", "from 8 to 8192 pixels a side", "Resize it first"))
    assert_next_prompt_runs(comfy)


def test_an_edit_runs_after_the_wrong_parts_and_images(comfy):
    assert_an_edit_runs(comfy)


IMAGE = "must be an IMAGE of shape [batch, height, width, 1/3/4 channels]"
BAD_TENSORS = [
    pytest.param(lambda: torch.full((1, 64, 64, 3), NAN), "contains NaN or infinite values", id="all-nan"),
    pytest.param(
        lambda: torch.zeros(1, 64, 64, 3).index_fill_(1, torch.tensor([5]), NAN), "contains NaN", id="one-nan-row"
    ),
    pytest.param(lambda: torch.full((1, 64, 64, 3), float("inf")), "contains NaN or infinite values", id="inf"),
    pytest.param(lambda: torch.full((2, 64, 64, 3), -float("inf")), "contains NaN or infinite values", id="minus-inf"),
    pytest.param(lambda: torch.zeros(0, 64, 64, 3), "is an empty batch; connect at least one image", id="empty-batch"),
    pytest.param(lambda: torch.zeros(1, 0, 64, 3), "from 8 to 8192 pixels a side", id="zero-height"),
    pytest.param(lambda: torch.zeros(64, 64, 3), IMAGE, id="no-batch-dimension"),
    pytest.param(lambda: torch.zeros(1, 64, 64, 2), IMAGE, id="two-channels"),
    pytest.param(lambda: torch.zeros(1, 1, 64, 64, 3), IMAGE, id="five-dimensions"),
    pytest.param(lambda: torch.zeros(1, 4, 8, 8), IMAGE, id="latent-shaped"),
    pytest.param(lambda: np.zeros((1, 64, 64, 3), np.float32), "must be an IMAGE, got ndarray", id="numpy-array"),
    pytest.param(lambda: {"samples": torch.zeros(1, 4, 8, 8)}, "must be an IMAGE, got dict", id="latent-dict"),
]


@pytest.mark.parametrize("make, words", BAD_TENSORS)
def test_bad_image_tensors_in_the_core(make, words):
    """What only another custom node can hand over (a graph cannot carry tensors): the core's check."""
    from optim import QwenFitError
    from optim.jobs.images import check_image_batch

    with pytest.raises(QwenFitError, match="connect|check the node|Resize") as error:
        check_image_batch(make(), "image")
    assert words in str(error.value)


BAD_MASKS = [
    pytest.param(lambda: torch.full((1, 64, 64), NAN), id="nan"),
    pytest.param(lambda: torch.full((64, 64), float("inf")), id="inf"),
    pytest.param(lambda: torch.zeros(1, 1, 64, 64), id="four-dimensions"),
    pytest.param(lambda: torch.zeros(64), id="one-dimension"),
]


@pytest.mark.parametrize("make", BAD_MASKS)
def test_bad_masks_in_the_core(make):
    from optim import QwenFitError
    from optim.jobs.images import with_alpha_from_mask

    with pytest.raises(QwenFitError, match=r"finite \[height, width\] MASK; connect the MASK output of Load Image"):
        with_alpha_from_mask(Image.new("RGB", (64, 64)), make())


def test_no_reference_images_in_the_core():
    from optim import EditJob, QwenFitError, Variant, run_edit

    stand_in = SimpleNamespace(variant=Variant.EDIT_2509, name="tiny")  # refused before the pipeline is used
    with pytest.raises(QwenFitError, match="takes 1 to 3 reference images, got 0"):
        run_edit(stand_in, [], EditJob(prompt="snow"))


# ---- values sent through the API ------------------------------------------------------------------------

SETTINGS_NODES = {
    "QwenFitPrecisionSelector": ("precision", {"transformer": "auto", "text_encoder": "auto", "vae": "auto"}),
    "QwenFitOffloadToggle": ("offload", {"mode": "auto", "vram_budget": "auto"}),
    "QwenFitVAESlicer": ("vae_settings", {"tiling": "auto", "slicing": "auto"}),
}
PICK = ("is not supported; pick one of", "not in list")  # ours, or ComfyUI's own combo check
SETTINGS_VALUES = [
    pytest.param("QwenFitPrecisionSelector", {"transformer": "fp7"}, id="precision-fp7"),
    pytest.param("QwenFitPrecisionSelector", {"text_encoder": "int4"}, id="precision-int4"),
    pytest.param("QwenFitPrecisionSelector", {"vae": None}, id="precision-null"),
    pytest.param("QwenFitOffloadToggle", {"mode": "disk"}, id="offload-disk"),
    pytest.param("QwenFitOffloadToggle", {"mode": 3}, id="offload-number"),
    pytest.param("QwenFitOffloadToggle", {"vram_budget": "9 GB"}, id="vram-budget-9-GB"),
    pytest.param("QwenFitOffloadToggle", {"host_budget": "1 TB"}, id="host-budget-1-TB"),
    pytest.param("QwenFitOffloadToggle", {"cfg": "fastest"}, id="cfg-fastest"),
    pytest.param("QwenFitOffloadToggle", {"gpus": "three"}, id="gpus-three"),
    pytest.param("QwenFitOffloadToggle", {"multi_gpu": "fastest"}, id="multi-gpu-fastest"),
    pytest.param("QwenFitVAESlicer", {"tiling": "maybe"}, id="vae-tiling-maybe"),
    pytest.param("QwenFitVAESlicer", {"slicing": "sometimes"}, id="vae-slicing-sometimes"),
]


@pytest.mark.parametrize("node, values", SETTINGS_VALUES)
def test_unknown_setting_values(comfy, node, values):
    socket, defaults = SETTINGS_NODES[node]
    graph = loader_graph(**{socket: ["10", 0]})
    graph["10"] = {"class_type": node, "inputs": {**defaults, **values}}
    result = queue(comfy, graph)
    assert_refused(result, (PICK, repr(next(iter(values.values())))))
    assert_next_prompt_runs(comfy)


NOT_THERE = "neither a file in models/diffusion_models nor a folder in models/diffusers"
LOADER_VALUES = [
    pytest.param({"variant": "edit-3000"}, ("'edit-3000' is unknown", "pick one of"), id="variant-unknown"),
    pytest.param(
        {"model": 12},
        (NOT_THERE,),
        id="model-a-number",
    ),
    pytest.param({"model": str(MODELS / "diffusion_models" / EDIT)}, (NOT_THERE,), id="model-absolute-path"),
    pytest.param({"model": f"../diffusion_models/{EDIT}"}, (NOT_THERE,), id="model-relative-traversal"),
    pytest.param({"model": "qwenfit-tiny-edit-2509/../qwenfit-tiny-edit-2511"}, (NOT_THERE,), id="folder-traversal"),
    pytest.param({"model": EDIT + "\x00"}, (NOT_THERE,), id="model-nul-byte"),
    pytest.param(
        {"text_encoder": f"../diffusion_models/{EDIT}"},
        ("is not a .safetensors or .gguf file in models/text_encoders", "Put the file there"),
        id="text-encoder-traversal",
    ),
    pytest.param(
        {"vae": str(MODELS / "vae" / EDIT_VAE)},
        ("is not a .safetensors file in models/vae", "Put the file there"),
        id="vae-absolute-path",
    ),
    pytest.param(
        {"lora": "../../../etc/passwd"},
        ("is not a .safetensors file in models/loras", "Put the file there"),
        id="lora-traversal",
    ),
    pytest.param(
        {"lora": LORA, "lora_strength": 100.0},
        ("lora_strength",),
        id="lora-strength-100",
    ),
    pytest.param(
        {"lora": LORA, "lora_strength": NAN},
        ("lora_strength",),
        id="lora-strength-nan",
    ),
]


@pytest.mark.parametrize("inputs, words", LOADER_VALUES)
def test_bad_loader_values(comfy, inputs, words):
    result = queue(comfy, loader_graph(**inputs))
    assert_refused(result, words)
    assert_next_prompt_runs(comfy)


RUN_VALUES = [
    pytest.param({"prompt": "   "}, ("the edit prompt is empty", "say what to change"), id="prompt-only-spaces"),
    pytest.param(
        {"width": 48, "height": 48}, ("width=48 is not usable", "multiple of 16 from 64 to 4096"), id="size-48"
    ),
    pytest.param({"width": 4112, "height": 128}, (("bigger than max of 4096", "from 64 to 4096"),), id="width-4112"),
    pytest.param({"steps": 0}, (("smaller than min of 1", "use 1 to 200"),), id="steps-0"),
    pytest.param({"steps": 201}, (("bigger than max of 200", "use 1 to 200"),), id="steps-201"),
    pytest.param({"steps": "ten"}, (("Failed to convert an input value to a INT", "steps"),), id="steps-a-word"),
    pytest.param({"seed": -1}, (("smaller than min of 0", "seed"),), id="seed-negative"),
    pytest.param({"seed": 2**64}, (("bigger than max of", "seed"),), id="seed-2-to-the-64"),
    pytest.param({"true_cfg_scale": 0.5}, (("smaller than min of 1.0", "true_cfg_scale"),), id="cfg-0.5"),
    pytest.param(
        {"true_cfg_scale": NAN},
        ("true_cfg_scale",),
        id="cfg-nan",
    ),
]


FORCED_STRATEGIES = [
    pytest.param(
        {"multi_gpu": "sequence_parallel", "gpus": "all"},
        4.0,
        ("sequence parallelism cannot run: this job runs with CFG", "Pick multi_gpu 'auto' or 'split'"),
        id="sequence-parallel-with-cfg",
    ),
    pytest.param(
        {"multi_gpu": "sequence_parallel", "gpus": "one"},
        1.0,
        ("sequence parallelism cannot run: it needs two or more GPUs and gpus is 'one'", "Set gpus to 'all'"),
        id="sequence-parallel-one-gpu",
    ),
    pytest.param(
        {"multi_gpu": "sequence_parallel", "gpus": "all"},
        1.0,
        ("sequence parallelism cannot run: it needs two or more GPUs and only cpu is visible", "Pick multi_gpu"),
        id="sequence-parallel-no-second-gpu",
    ),
    pytest.param(
        {"multi_gpu": "cfg_parallel", "gpus": "one"},
        4.0,
        ("CFG-parallel cannot run: it needs two or more GPUs and gpus is 'one'", "Set gpus to 'all'"),
        id="cfg-parallel-one-gpu",
    ),
    pytest.param(
        {"multi_gpu": "cfg_parallel", "gpus": "all"},
        4.0,
        ("CFG-parallel cannot run: it needs two or more GPUs and only cpu is visible", "Pick multi_gpu"),
        id="cfg-parallel-no-second-gpu",
    ),
]


@pytest.mark.parametrize("offload, scale, words", FORCED_STRATEGIES)
def test_a_strategy_forced_where_it_cannot_run(comfy, offload, scale, words):
    """multi_gpu forced on a job or machine it cannot serve: refused at the run with the reason and the fix."""
    graph = edit_graph(true_cfg_scale=scale)
    graph["1"]["inputs"]["offload"] = ["10", 0]
    graph["10"] = {"class_type": "QwenFitOffloadToggle", "inputs": {"mode": "auto", "vram_budget": "auto", **offload}}
    assert_refused(queue(comfy, graph), words)
    assert_next_prompt_runs(comfy)


@pytest.mark.parametrize("inputs, words", RUN_VALUES)
def test_bad_instruct_edit_values(comfy, inputs, words):
    result = queue(comfy, edit_graph(**inputs))
    assert_refused(result, words)
    assert_next_prompt_runs(comfy)


def test_psd_prefix_that_climbs_out_of_the_output_folder(comfy):
    result = queue(comfy, layered_graph(save_psd=True, filename_prefix="../../corpus_escape"))
    assert_refused(result, ("points outside the output folder", "use a plain name"))
    for folder in (comfy.output_dir, comfy.base, comfy.base.parent):
        assert not list(folder.glob("corpus_escape*"))
    assert_next_prompt_runs(comfy)


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/escape", "sub/../../escape", "", "..", "."])
def test_psd_prefixes_in_the_core(tmp_path, prefix):
    from optim import QwenFitError
    from optim.jobs.psd_export import next_free_path

    with pytest.raises(QwenFitError, match="outside the output folder|not a usable file name"):
        next_free_path(tmp_path / "output", prefix)
    assert list(tmp_path.iterdir()) == []


def test_an_edit_runs_after_the_bad_values(comfy):
    assert_an_edit_runs(comfy)


# ---- the /qwenfit/ routes --------------------------------------------------------------------------

HISTORY = "/qwenfit/memory/history"
PREVIEW = "/qwenfit/plan_preview"
ROUTES = [
    pytest.param("/qwenfit/memory", {"seconds": "5"}, "seconds", id="memory-seconds"),
    pytest.param("/qwenfit/memory", {"../../etc/passwd": "1"}, "../../etc/passwd", id="memory-traversal-name"),
    pytest.param("/qwenfit/memory", {"モデル": "1"}, "モデル", id="memory-unicode-name"),
    pytest.param("/qwenfit/memory", "%ff%fe=1", "\ufffd\ufffd", id="memory-invalid-utf8-name"),
    pytest.param("/qwenfit/memory", {"a" * 7000: "1"}, "a" * 7000, id="memory-7kB-name"),
    pytest.param(HISTORY, {"seconds": "NaN"}, "seconds", id="history-nan"),
    pytest.param(HISTORY, {"seconds": "inf"}, "seconds", id="history-inf"),
    pytest.param(HISTORY, {"seconds": "1.5"}, "seconds", id="history-fraction"),
    pytest.param(HISTORY, {"seconds": "1e2"}, "seconds", id="history-exponent"),
    pytest.param(HISTORY, {"seconds": "0x10"}, "seconds", id="history-hex"),
    pytest.param(HISTORY, {"seconds": " 5"}, "seconds", id="history-space"),
    pytest.param(HISTORY, {"seconds": "-0"}, "seconds", id="history-minus-zero"),
    pytest.param(HISTORY, {"seconds": "601"}, "seconds", id="history-601"),
    pytest.param(HISTORY, {"seconds": ""}, "seconds", id="history-empty"),
    pytest.param(HISTORY, "seconds=%00", "seconds", id="history-nul"),
    pytest.param(HISTORY, "seconds=5&seconds=6", "seconds", id="history-twice"),
    pytest.param(HISTORY, {"seconds": "5", "model": "../../etc/passwd"}, "model", id="history-extra-parameter"),
    pytest.param(
        HISTORY,
        {"seconds": "9" * 5000},
        "seconds",
        id="history-5000-digits",
    ),
    pytest.param(
        HISTORY,
        {"seconds": "²"},
        "seconds",
        id="history-superscript-two",
    ),
    pytest.param("/qwenfit/last_run", {"seconds": "1"}, "seconds", id="last-run-seconds"),
    pytest.param("/qwenfit/last_run", "=1", "", id="last-run-empty-name"),
    pytest.param(PREVIEW, "model=%2e%2e%2f%2e%2e%2fetc%2fpasswd", "model", id="url-encoded-traversal"),
    pytest.param(PREVIEW, {"model": "..\\..\\windows\\win.ini"}, "model", id="backslash-traversal"),
    pytest.param(PREVIEW, {"model": "file:///etc/passwd"}, "model", id="file-url"),
    pytest.param(PREVIEW, {"model": str(MODELS / "diffusion_models" / EDIT)}, "model", id="absolute-path-of-a-model"),
    pytest.param(PREVIEW, {"model": "qwenfit-tiny-edit-2509/../qwenfit-tiny-layered"}, "model", id="folder-traversal"),
    pytest.param(PREVIEW, {"model": "x" * 7000}, "model", id="7kB-model"),
    pytest.param(PREVIEW, {"model": EDIT + "\x00"}, "model", id="model-nul-byte"),
    pytest.param(
        PREVIEW,
        {"model": EDIT, "text_encoder": f"../diffusion_models/{EDIT}"},
        "text_encoder",
        id="text-encoder-traversal",
    ),
    pytest.param(PREVIEW, {"model": EDIT, "vae": str(MODELS / "vae" / EDIT_VAE)}, "vae", id="vae-absolute-path"),
    pytest.param(PREVIEW, {"model": EDIT, "lora": "/etc/passwd"}, "lora", id="lora-absolute-path"),
    pytest.param(PREVIEW, {"model": EDIT, "lora": "../loras/x.safetensors"}, "lora", id="lora-traversal"),
    pytest.param(PREVIEW, {"model": EDIT, "width": "9" * 5000, "height": "128"}, "width", id="width-5000-digits"),
    pytest.param(PREVIEW, {"model": EDIT, "width": "1e309", "height": "128"}, "width", id="width-1e309"),
    pytest.param(PREVIEW, {"model": EDIT, "width": "-16", "height": "-16"}, "width", id="width-negative"),
    pytest.param(PREVIEW, {"model": EDIT, "width": "128", "width ": "256"}, "width ", id="width-with-a-space"),
    pytest.param(PREVIEW, f"model={EDIT}&width=128&width=256&height=128", "width", id="width-twice"),
    pytest.param(PREVIEW, {"model": EDIT, "aspect": "inf"}, "aspect", id="aspect-inf"),
    pytest.param(PREVIEW, {"model": EDIT, "aspect": "-inf"}, "aspect", id="aspect-minus-inf"),
    pytest.param(PREVIEW, {"model": EDIT, "aspect": "1e-400"}, "aspect", id="aspect-underflow"),
    pytest.param(PREVIEW, {"model": EDIT, "cfg_scale": "NaN"}, "cfg_scale", id="cfg-scale-nan"),
    pytest.param(PREVIEW, {"model": EDIT, "steps": "-1"}, "steps", id="steps-negative"),
    pytest.param(PREVIEW, {"model": EDIT, "references": "0"}, "references", id="references-0"),
    pytest.param(PREVIEW, {"model": EDIT, "layers": "-3"}, "layers", id="layers-negative"),
    pytest.param(PREVIEW, {"model": EDIT, "gpus": "three"}, "gpus", id="gpus-three"),
    pytest.param(PREVIEW, {"model": EDIT, "multi_gpu": "fastest"}, "multi_gpu", id="multi-gpu-fastest"),
    pytest.param(PREVIEW, {"model": EDIT, "host_budget": "1 TB"}, "host_budget", id="host-budget-1-TB"),
    pytest.param(PREVIEW, {"model": EDIT, "cfg_pass": "fastest"}, "cfg_pass", id="cfg-pass-fastest"),
    pytest.param(PREVIEW, {"model": EDIT, "vae_tiling": "maybe"}, "vae_tiling", id="vae-tiling-maybe"),
    pytest.param(PREVIEW, {"model": EDIT, "vae_slicing": "sometimes"}, "vae_slicing", id="vae-slicing-sometimes"),
    pytest.param(
        PREVIEW, {"model": EDIT, "precision_text_encoder": "fp7"}, "precision_text_encoder", id="precision-fp7"
    ),
    pytest.param(PREVIEW, {"model": EDIT, "variant": "edit-3000"}, "variant", id="variant-unknown"),
    pytest.param(PREVIEW, {"model": EDIT, "job": "video"}, "job", id="job-video"),
    pytest.param(PREVIEW, {"model": EDIT, "caption": "2"}, "caption", id="caption-2"),
]


def assert_no_paths(comfy, response: requests.Response) -> None:
    """No path of this machine and no file's content in an answer."""
    text = response.text
    assert str(comfy.base) not in text and str(comfy.models) not in text and str(comfy.comfy) not in text
    assert "/home/" not in text and "/tmp/" not in text and "/work/" not in text
    assert "root:x:" not in text and "[fonts]" not in text


def get(comfy, path: str, query: dict | str) -> requests.Response:
    if isinstance(query, str):  # sent as written: encodings requests would normalise
        return requests.get(f"{comfy.url}{path}?{query}", timeout=30)
    return comfy.get(path, **query)


@pytest.mark.parametrize("path, query, parameter", ROUTES)
def test_absurd_route_parameters_get_400_with_a_reason(comfy, path, query, parameter):
    response = get(comfy, path, query)
    assert response.status_code == 400, response.text
    data = response.json()
    assert data["parameter"] == parameter and len(data["error"]) > 10, data
    assert_no_paths(comfy, response)


@pytest.mark.parametrize(
    "query, parameter",
    [
        pytest.param({"model": "qwen_image_edit_2511_fp8mixed.safetensors"}, "model", id="preset-model-not-in-place"),
        pytest.param("model=%252e%252e%252fetc%252fpasswd", "model", id="double-encoded-traversal"),
        pytest.param({"model": "モデル.safetensors"}, "model", id="unicode-model"),
        pytest.param({"model": EDIT, "vae": "qwen_image_vae.safetensors"}, "vae", id="preset-vae-not-in-place"),
        pytest.param({"model": EDIT, "loras": '[["absent.safetensors", 1.0]]'}, "loras", id="lora-chain-not-in-place"),
    ],
)
def test_a_file_the_loader_does_not_list_is_a_normal_state(comfy, query, parameter):
    # A shared preset names files a new user has not put in place yet: the badge says where they go,
    # and the browser sees no failed request (an HTTP error is a console error in the frontend).
    response = get(comfy, PREVIEW, query)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["ok"] is False and data["status"] == "missing_file" and data["parameter"] == parameter, data
    assert "put the file there" in data["error"], data
    assert_no_paths(comfy, response)


@pytest.mark.parametrize(
    "path, query",
    [
        pytest.param(HISTORY, {"seconds": "x" * 10_000}, id="history-10kB-value"),
        pytest.param(PREVIEW, {"model": "x" * 10_000}, id="preview-10kB-model"),
        pytest.param("/qwenfit/last_run", {"x" * 10_000: "1"}, id="last-run-10kB-name"),
        pytest.param("/qwenfit/memory", {"a": "../" * 3400 + "etc/passwd"}, id="memory-10kB-traversal"),
    ],
)
def test_10kB_parameters_are_refused_before_the_pack(comfy, path, query):
    """Past 8 kB aiohttp refuses the request line itself (400, its own words); the server goes on."""
    response = get(comfy, path, query)
    assert response.status_code in (400, 414, 431), response.text[:300]
    assert_no_paths(comfy, response)
    assert comfy.get("/qwenfit/memory").status_code == 200


def test_the_server_serves_after_the_bad_route_parameters(comfy):
    assert comfy.get("/qwenfit/memory/history", seconds=5).status_code == 200
    assert_next_prompt_runs(comfy)


# ---- the safetensors reader's own reasons ---------------------------------------------------------------


@pytest.mark.parametrize(
    "data, reason",
    [
        pytest.param(
            b"",
            "shorter than a header",
            id="empty-file",
        ),
        pytest.param(
            struct.pack("<Q", 10_000) + b"{}",
            "header length beyond the file",
            id="header-longer-than-the-file",
        ),
        pytest.param(safetensors_bytes("[1]"), "header is not a table", id="header-a-list"),
        pytest.param(
            safetensors_bytes('{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', b"\0" * 4),
            "tensor 'w' runs past the end of the file",
            id="tensor-past-the-end",
        ),
    ],
)
def test_the_reader_says_what_is_wrong_with_the_file(tmp_path, data, reason):
    from optim import QwenFitError
    from optim.files.safetensors_file import SafetensorsFile

    path = tmp_path / "damaged.safetensors"
    path.write_bytes(data)
    with pytest.raises(QwenFitError, match="download it again") as error:
        SafetensorsFile(path)
    assert f"({reason})" in str(error.value)
