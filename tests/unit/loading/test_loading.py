"""Loading the files users have into the planned formats: fp8 storage, bad files, bounded memory, caching."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref

import pytest
import torch
from conftest import REPO
from safetensors.torch import save_file
from tiny_files import FOLDER, MODELS, TE_BF16, TOKENIZER, split_files

from optim import DiffusersFolder, LoadRequest, PipelineCache, PrecisionSettings, QwenFitError, SplitFiles
from optim.files.fp8_layouts import Fp8Layout
from optim.files.weight_source import WeightSource
from optim.loading.loader import load_pipeline
from optim.quant.fp8 import Fp8Linear


def test_truncated_file_is_refused_and_nothing_stays_loaded(tmp_path):
    source = MODELS / "text_encoders" / TE_BF16
    truncated = tmp_path / "qwen_2.5_vl_truncated.safetensors"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    files = split_files("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509")
    with pytest.raises(QwenFitError, match="truncated"):
        load_pipeline(LoadRequest(source=SplitFiles(files.transformer, truncated, files.vae, TOKENIZER)))
    gc.collect()
    from diffusers import QwenImageTransformer2DModel

    alive = [o for o in gc.get_objects() if isinstance(o, QwenImageTransformer2DModel)]
    assert alive == []


def test_fp8_files_keep_fp8_storage_with_comfyui_scales():
    files = split_files("qwenfit_tiny_edit_2509_fp8_e4m3fn.safetensors", "edit-2509", text_encoder=TE_BF16)
    loaded = load_pipeline(LoadRequest(source=files)).wait_until_filled()
    layer = loaded.pipeline.transformer.transformer_blocks[1].attn.to_q
    assert isinstance(layer, Fp8Linear) and layer.weight_fp8.dtype == torch.float8_e4m3fn
    assert layer.layout == Fp8Layout.SCALED
    source = WeightSource([files.transformer], lambda k: "model.diffusion_model." + k)
    stored = source.read_fp8("transformer_blocks.1.attn.to_q.weight")
    # ComfyUI's scaled-fp8 arithmetic: weight.to(dtype) * scale_weight.to(dtype)
    expected = stored.data.to(torch.float32) * stored.scale.to(torch.float32)
    assert torch.equal(layer.dequantized_weight(torch.float32), expected)
    assert loaded.pipeline.transformer.dtype == torch.float32  # compute dtype, never fp8


def test_mixed_fp8_keeps_unquantized_layers_dense():
    loaded = load_pipeline(LoadRequest(source=split_files("qwenfit_tiny_edit_2511_fp8mixed.safetensors", "edit-2511")))
    blocks = loaded.pipeline.transformer.transformer_blocks
    assert not isinstance(blocks[0].attn.to_q, Fp8Linear)  # left in high precision by the file
    assert isinstance(blocks[1].attn.to_q, Fp8Linear) and blocks[1].attn.to_q.layout == Fp8Layout.MIXED


def test_cache_reuses_same_selection_and_frees_the_old_one():
    cache = PipelineCache()
    first = LoadRequest(source=DiffusersFolder(MODELS / "diffusers" / FOLDER["edit-2509"]))
    loaded = cache.get(first)
    assert cache.get(first) is loaded and cache.loads == 1
    old = weakref.ref(loaded.pipeline.transformer)
    del loaded
    cache.get(
        LoadRequest(
            source=split_files("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509"),
            precision=PrecisionSettings(transformer="bf16"),
        )
    )
    gc.collect()
    assert cache.loads == 2 and old() is None
    cache.clear()


MEMORY_PROBE = r"""
import json, sys, threading, time
import psutil, torch
import accelerate, diffusers.models  # imported before measuring: only the load itself counts
sys.path.insert(0, sys.argv[1])
from optim import Variant
from optim.loading.assemble import build_transformer
from optim.files.weight_source import WeightSource
path, fp8 = sys.argv[2], sys.argv[3]
config = json.load(open(sys.argv[4]))
source = WeightSource([path])
build_transformer(WeightSource([path]), None, config, Variant.EDIT_2509, torch.bfloat16, torch.device("meta"), fp8="none")
process, peak, done = psutil.Process(), [0], threading.Event()
def sample():  # resident memory every millisecond while loading
    while not done.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.001)
before = process.memory_info().rss
sampler = threading.Thread(target=sample)
sampler.start()
module = build_transformer(source, None, config, Variant.EDIT_2509, torch.bfloat16, torch.device("cpu"), fp8=fp8)
done.set()
sampler.join()
after = process.memory_info().rss
print(json.dumps({"growth": max(peak[0], after) - before, "kept": after - before, "file": source.nbytes}))
"""


@pytest.fixture(scope="module")
def medium_transformer(tmp_path_factory):
    """A bf16 transformer file of ~100 MB: small enough for CI, large enough to measure."""
    from diffusers import QwenImageTransformer2DModel

    config = {
        "num_layers": 5,
        "attention_head_dim": 64,
        "num_attention_heads": 8,
        "joint_attention_dim": 64,
        "axes_dims_rope": [8, 28, 28],
        "in_channels": 64,
        "out_channels": 16,
        "patch_size": 2,
    }
    folder = tmp_path_factory.mktemp("medium")
    model = QwenImageTransformer2DModel.from_config(config).to(torch.bfloat16)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / "t.safetensors"))
    from tools.comfy_layouts import scaled_fp8

    save_file(
        scaled_fp8(weights, lambda k: k.startswith("transformer_blocks.") and "norm" not in k),
        str(folder / "t_fp8.safetensors"),
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "fp8, file", [("none", "t"), ("all", "t"), ("as_stored", "t_fp8")], ids=["bf16-plan", "fp8-plan", "fp8-file"]
)
def test_load_peak_host_memory_is_bounded(medium_transformer, fp8, file):
    """Peak RSS growth while loading: at most the file size + 32 MiB for a bf16 plan and for an fp8 file
    kept in fp8; for a bf16 file on an fp8-storage plan below 0.9x the file size, so the bf16 transformer
    never existed whole."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_PROBE,
            str(REPO),
            str(medium_transformer / f"{file}.safetensors"),
            fp8,
            str(medium_transformer / "config.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    file_size = m["file"]
    assert file_size > (40 if fp8 == "as_stored" else 80) * 2**20
    if fp8 == "as_stored":
        assert m["growth"] <= file_size + 32 * 2**20, m
        assert m["kept"] >= 0.8 * file_size, m
    elif fp8 == "all":
        assert m["growth"] <= 0.9 * file_size, m
        assert m["kept"] <= 0.75 * file_size, m
    else:
        assert m["growth"] <= file_size + 32 * 2**20, m
        assert m["kept"] >= 0.9 * file_size, m  # the weights really were loaded, in bf16
