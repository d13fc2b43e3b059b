"""ComfyUI's own native Qwen-Image-Edit-2509 path, in process, on an emulated small card.

    python bench/comfy_native.py write --tokenizer DIR --models DIR [--layout scaled,e4m3fn]
        real-size random weights (the benchmark's seeds, ``bench.realsize``) written once as ComfyUI's
        split files, through ``bench.host_ram.write`` (one build of the components):
        diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors        (layout "scaled": fp8 blocks
            with ``scale_weight`` and the ``scaled_fp8`` marker),
        diffusion_models/qwen_image_edit_2509_fp8_e4m3fn_plain.safetensors  (layout "e4m3fn": the same
            block weights cast with ``.to(torch.float8_e4m3fn)``, no scales, no marker; same key names),
        text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors, vae/qwen_image_vae.safetensors, and the reference
        input/qwenfit_reference_SIZE.png (``bench.jobs.synthetic_image``, read back through LoadImage)
    python bench/comfy_native.py run-native --comfy DIR --models DIR --transformer scaled|e4m3fn|FILE_NAME
            --card 8|24|none [--steps 6] --out FILE.json
        one generation through ComfyUI's node classes, one fresh process per call; the JSON and the final
        latent (FILE.safetensors, key "latent", float32) are written next to each other
    python bench/comfy_native.py table FILE.json [FILE.json ...]
        the Markdown table of any result files that carry ROW_KEYS (QwenFit rows included)

CPU check (tiny files; ComfyUI's fixed Qwen-Image sizes patched in process, see ``patch_tiny_sizes``):
``write --arch qwenfit-tiny --device cpu --tokenizer T --models /tmp/x``, then ``run-native --arch qwenfit-tiny
--device cpu --models /tmp/x --steps 2 --out /tmp/x.json`` (about 20 s; the timings mean nothing).

The workflow (ComfyUI 0.3.75's template image_qwen_image_edit_2509, LoRA bypassed, run node by node the
way ``execution.py`` does, under ``torch.inference_mode()``):
UNETLoader(weight_dtype "default"), CLIPLoader(type "qwen_image", device "default"), VAELoader; the
reference (``bench.jobs.synthetic_image(size)``, RGB, saved by ``write`` and read by LoadImage) through
ImageScaleToTotalPixels(lanczos, 1.0 MP) (the template of Qwen-Image-Edit; the 2509 template's
FluxKontextImageScale gives the same 1024x1024 for a 1024x1024 input; ``--size`` changes the source picture
only, the scaling brings it to 1 MP), VAEEncode of it as the latent;
TextEncodeQwenImageEditPlus(clip, vae, image1=reference) for the prompt and, with prompt "", for the
negative (the template's wiring); ModelSamplingAuraFlow(shift 3) and CFGNorm(strength 1) as in the
template (``--bare`` leaves them out); KSampler(seed 0, steps, cfg 4.0, euler, simple, denoise 1.0);
VAEDecode.

ComfyUI's settings (``comfy.cli_args.args``) are those of a server started with no flags
(``parse_args([])``): VRAM state decided by ComfyUI (NORMAL_VRAM, so weights are loaded partially when
they do not fit), smart memory on, async weight offload (2 streams on NVIDIA), pinned host memory on (up to
95% of host RAM, not emulated), no
``--fast`` (no fp8 matmul), PyTorch SDPA attention, previews off, ``--reserve-vram`` unset (400 MB on
Linux). The allocator is chosen as ``main.py`` does: the tree's ``cuda_malloc`` module is imported before
torch, which sets ``PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync`` on CUDA builds of torch >= 2
(``--disable-cuda-malloc`` keeps torch's native caching allocator). ``--device cpu`` sets ``args.cpu``.
Custom nodes, the server, the prompt queue and its cache are not started; only the node modules used are
imported (``nodes``, ``comfy_extras.nodes_qwen``, ``nodes_post_processing``, ``nodes_model_advanced``,
``nodes_cfg``), so no frontend, database or API-node package is needed. Missing packages (checked on a full
ComfyUI environment with the others hidden): ``torchsde`` (``comfy.k_diffusion.sampling`` imports it
at the top; it needs ``trampoline``) must be installed; ``av`` (PyAV, video only: ``comfy_api.latest``
imports it at the top) is replaced by an empty stand-in module when it is absent (``_stub_av``);
``torchaudio`` is optional in ComfyUI (it logs a warning).

Card emulation (``emulate_card``, before ``comfy.model_management`` is imported, since it sizes itself at
import): ComfyUI takes total and free VRAM only from ``torch.cuda.mem_get_info`` and
``torch.cuda.memory_stats`` (``get_total_memory``, ``get_free_memory``; ``get_device_properties`` is read for
the compute capability and AMD arch only). ``torch.cuda.mem_get_info`` (and ``torch.cuda.memory.mem_get_info``)
is replaced: total = the card (8 or 24 GiB), free = usable (7.0 or 22.0 GiB: the card less the CUDA context
and the desktop) minus ``torch.cuda.memory_reserved()`` of this process (never more than the real free).
ComfyUI adds reserved-but-inactive bytes back, so it sees usable - active bytes free, as on the real card.
Enforcement: ``torch.cuda.set_per_process_memory_fraction(usable / real total)``. Under torch's native
allocator this caps the reserved pool; under cudaMallocAsync (ComfyUI's default) it caps the bytes in use
only, so the pool's reserved peak may exceed the usable figure without an error (a real card would trim
its pool and retry): read ``peak_allocated_bytes`` as the enforced figure there. Host RAM is not emulated.
``--card none``: nothing is patched (the whole GPU).

Measured: loaders' seconds, each phase's seconds and peak reserved/allocated (counters reset per phase),
seconds to the first image (from the first loader to the decoded image, synchronised), each step's end
through ComfyUI's progress hook (``comfy.utils.set_progress_bar_global_hook``, as the server's
``hijack_progress``) with a device synchronise, the denoising start at the first diffusion-model call (a
forward pre-hook), steady s/step (the steps after the first), and ComfyUI's log lines.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GIB = 1024**3
TRANSFORMER_SCALED = "diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors"  # = bench.host_ram.TRANSFORMER
TRANSFORMER_PLAIN = "diffusion_models/qwen_image_edit_2509_fp8_e4m3fn_plain.safetensors"
TEXT_ENCODER = "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors"
VAE = "vae/qwen_image_vae.safetensors"
LAYOUTS = {"scaled": TRANSFORMER_SCALED, "e4m3fn": TRANSFORMER_PLAIN}
CARDS = {"8": (8.0, 7.0), "24": (24.0, 22.0), "none": None}  # card GiB, usable GiB
PROMPT = "make the sky purple"
# What ``table`` reads; a QwenFit row written by another script needs the same keys.
ROW_KEYS = (
    "runner",  # e.g. "ComfyUI 0.3.75 native" or "QwenFit 8 GB preset"
    "card",  # "8", "24" or "none"
    "layout",  # "scaled" or "e4m3fn" (the transformer file)
    "seconds_per_step_steady",
    "load_seconds",
    "first_image_seconds",
    "peak_reserved_bytes",
    "peak_allocated_bytes",
)


def _is_block_weight(key: str) -> bool:
    # The same tensors bench/host_ram.py quantizes: 2-D weights inside the transformer blocks.
    return key.startswith("transformer_blocks.") and key.endswith(".weight") and "norm" not in key


# ---- write ----------------------------------------------------------------------------------------


def write(
    tokenizer: Path, models: Path, layouts: list[str], arch: str = "qwen-image", device: str = "cuda", size: int = 1024
) -> dict:
    """Build the components once and write the chosen transformer layouts, the text encoder and the VAE.

    ``bench.host_ram.write`` writes the scaled transformer, the text encoder and the VAE; the transformer
    it built is kept (a wrapper around ``bench.realsize.build_components``) to write the plain e4m3fn file
    from the same weights afterwards. Without "scaled", the file it wrote is removed again.
    """
    import torch
    from safetensors.torch import save_file

    import bench.realsize as realsize
    from bench import host_ram

    assert host_ram.TRANSFORMER == TRANSFORMER_SCALED and host_ram.TEXT_ENCODER == TEXT_ENCODER and host_ram.VAE == VAE
    start = time.perf_counter()
    kept: dict = {}
    build = realsize.build_components

    def build_and_keep(*args, **kwargs):
        parts = build(*args, **kwargs)
        kept["transformer"] = parts["transformer"]
        return parts

    realsize.build_components = build_and_keep
    try:
        result = host_ram.write(tokenizer, models, arch, device)
    finally:
        realsize.build_components = build
    transformer = kept.pop("transformer")
    if "e4m3fn" in layouts:
        plain_start = time.perf_counter()
        tensors = {}
        with torch.no_grad():
            for key, value in transformer.state_dict().items():
                if _is_block_weight(key) and value.ndim == 2:
                    tensors["model.diffusion_model." + key] = value.to(torch.float8_e4m3fn).cpu()
                else:
                    tensors["model.diffusion_model." + key] = value.to("cpu", copy=True).contiguous()
        del transformer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        save_file(tensors, str(models / TRANSFORMER_PLAIN))
        del tensors
        result["plain_seconds"] = time.perf_counter() - plain_start
        result["file_bytes"][TRANSFORMER_PLAIN] = (models / TRANSFORMER_PLAIN).stat().st_size
    else:
        del transformer
    write_reference(models, size)
    if "scaled" not in layouts:
        (models / TRANSFORMER_SCALED).unlink()
        result["file_bytes"].pop(TRANSFORMER_SCALED)
    result["seconds"] = time.perf_counter() - start
    result["arch"] = arch
    return result


# ---- process set-up (before torch) -----------------------------------------------------------------


def _stub_av() -> bool:
    """An empty ``av`` (PyAV) when it is not installed: ComfyUI's ``comfy_api.latest`` imports it at the top
    for its video types, which this workflow never uses. Any use of it fails with AttributeError."""
    import importlib.machinery
    import importlib.util
    import types

    if importlib.util.find_spec("av") is not None:
        return False
    names = {
        "av": {},
        "av.container": {"InputContainer": type("InputContainer", (), {})},
        "av.subtitles": {},
        "av.subtitles.stream": {"SubtitleStream": type("SubtitleStream", (), {})},
    }
    for name, attrs in names.items():
        module = types.ModuleType(name, "stand-in for PyAV (not installed): bench/comfy_native.py")
        # A spec, so that libraries asking importlib.util.find_spec("av") get an answer instead of a
        # ValueError; with no distribution metadata they still find PyAV unavailable.
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    sys.modules["av"].container = sys.modules["av.container"]
    sys.modules["av"].subtitles = sys.modules["av.subtitles"]
    sys.modules["av.subtitles"].stream = sys.modules["av.subtitles.stream"]
    return True


def setup_comfy(comfy: Path, device: str, disable_cuda_malloc: bool) -> dict:
    """Put the ComfyUI tree first on sys.path (its ``nodes``/``utils`` win over this repo's) and set its args
    as a default server would. Must run before torch is imported."""
    if "torch" in sys.modules:
        raise RuntimeError("torch was imported before ComfyUI's cuda_malloc could choose the allocator")
    sys.path.insert(0, str(comfy.resolve()))
    from comfy.cli_args import args  # parse_args([]): comfy.options.args_parsing is False

    args.cpu = device == "cpu"
    args.disable_cuda_malloc = disable_cuda_malloc
    if not args.cpu:
        import cuda_malloc  # noqa: F401  (the tree's module: sets PYTORCH_CUDA_ALLOC_CONF as main.py does)
    return {
        "av_stub": _stub_av(),
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "args": {
            k: (v if isinstance(v, (bool, int, float, str, type(None))) else str(v)) for k, v in vars(args).items()
        },
    }


def emulate_card(card: str) -> dict | None:
    """Make ComfyUI (and torch) see a card of ``CARDS[card]``; see the module docstring."""
    import torch

    if CARDS[card] is None:
        return None
    card_gib, usable_gib = CARDS[card]
    device = torch.cuda.current_device()
    real_free, real_total = torch.cuda.mem_get_info(device)
    usable = int(usable_gib * GIB)
    fraction = usable / real_total
    real = torch.cuda.memory.mem_get_info

    def mem_get_info(dev=None):
        free, _ = real(dev)
        return max(0, min(free, usable - torch.cuda.memory_reserved(dev))), int(card_gib * GIB)

    torch.cuda.mem_get_info = mem_get_info
    torch.cuda.memory.mem_get_info = mem_get_info
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return {
        "card_gib": card_gib,
        "usable_gib": usable_gib,
        "real_total_bytes": real_total,
        "real_free_bytes_before": real_free,
        "memory_fraction": fraction,
    }


# Sizes of ComfyUI's Qwen-Image modules that its loaders do not read from the files (fixed 7B text
# encoder, fixed Wan-2.1 VAE levels, transformer width): patched in process for the tiny CPU check only.
TINY = "qwenfit-tiny"


def patch_tiny_sizes() -> dict:
    """Give ComfyUI's Qwen-Image classes the sizes of optim/qwen/configs/qwenfit-tiny (tiny files only)."""
    import dataclasses

    import comfy.ldm.wan.vae as wan_vae
    import comfy.model_detection as detection
    import comfy.sd
    import comfy.text_encoders.llama as llama
    import comfy.text_encoders.qwen_vl as qwen_vl

    configs = REPO / "optim" / "qwen" / "configs" / TINY
    dit = json.loads((configs / "transformer.json").read_text())
    te = json.loads((configs / "text_encoder.json").read_text())
    vae = json.loads((configs / "vae.json").read_text())
    text, vision = te["text_config"], te["vision_config"]

    detect = detection.detect_unet_config

    def detect_tiny(state_dict, key_prefix, metadata=None):
        config = detect(state_dict, key_prefix, metadata=metadata)
        if config is not None and config.get("image_model") == "qwen_image":
            config.update(
                attention_head_dim=dit["attention_head_dim"],
                num_attention_heads=dit["num_attention_heads"],
                joint_attention_dim=dit["joint_attention_dim"],
                axes_dims_rope=tuple(dit["axes_dims_rope"]),
            )
        return config

    detection.detect_unet_config = detect_tiny

    te_detect = comfy.sd.detect_te_model

    def te_detect_tiny(sd):  # ComfyUI tells Qwen2.5-VL 7B by its k_proj bias of 512 (4 heads x 128)
        if "model.layers.0.self_attn.k_proj.bias" in sd and "visual.patch_embed.proj.weight" in sd:
            return comfy.sd.TEModel.QWEN25_7B
        return te_detect(sd)

    comfy.sd.detect_te_model = te_detect_tiny

    base = llama.Qwen25_7BVLI_Config
    tiny_config = dataclasses.make_dataclass(
        "TinyQwen25VLConfig",
        [
            ("vocab_size", int, dataclasses.field(default=text["vocab_size"])),
            ("hidden_size", int, dataclasses.field(default=text["hidden_size"])),
            ("intermediate_size", int, dataclasses.field(default=text["intermediate_size"])),
            ("num_hidden_layers", int, dataclasses.field(default=text["num_hidden_layers"])),
            ("num_attention_heads", int, dataclasses.field(default=text["num_attention_heads"])),
            ("num_key_value_heads", int, dataclasses.field(default=text["num_key_value_heads"])),
        ],
        bases=(base,),
    )
    tiny_config.head_dim = text["hidden_size"] // text["num_attention_heads"]
    tiny_config.rope_dims = list(text["rope_parameters"]["mrope_section"])
    llama.Qwen25_7BVLI_Config = tiny_config

    vision_class = qwen_vl.Qwen2VLVisionTransformer

    class TinyVision(vision_class):
        def __init__(self, **kwargs):
            kwargs.update(
                hidden_size=vision["hidden_size"],
                intermediate_size=vision["intermediate_size"],
                num_heads=vision["num_heads"],
                num_layers=vision["depth"],
                window_size=vision["window_size"],
            )
            super().__init__(**kwargs)
            self.fullatt_block_indexes = list(vision["fullatt_block_indexes"])

    qwen_vl.Qwen2VLVisionTransformer = TinyVision

    vae_class = wan_vae.WanVAE

    class TinyWanVAE(vae_class):
        def __init__(self, **kwargs):
            kwargs.update(dim_mult=list(vae["dim_mult"]), num_res_blocks=vae["num_res_blocks"])
            super().__init__(**kwargs)

    wan_vae.WanVAE = TinyWanVAE
    return {"transformer": dit, "text_encoder": text, "vision": vision, "vae": vae}


# ---- the same workflow as an API prompt ------------------------------------------------------------


def native_graph(
    image: list,
    steps: int = 6,
    seed: int = 0,
    cfg: float = 4.0,
    transformer: str = TRANSFORMER_SCALED,
    text_encoder: str = TEXT_ENCODER,
    vae: str = VAE,
    prompt: str = PROMPT,
    bare: bool = False,
    prefix: str = "n",
) -> tuple[dict, list]:
    """``run_native``'s workflow as API-format nodes for a server's ``POST /prompt``: UNETLoader, CLIPLoader
    (qwen_image), VAELoader, ImageScaleToTotalPixels(lanczos, 1 MP), VAEEncode, TextEncodeQwenImageEditPlus for
    the prompt and for "" (image1 = the scaled picture, with the VAE), ModelSamplingAuraFlow(3) and CFGNorm(1)
    unless ``bare``, KSampler(euler, simple, denoise 1), VAEDecode. ``image`` is the link of the picture to edit
    (``[node id, output]``); node ids start with ``prefix``. Returns the nodes and the decoded IMAGE's link.
    ``resolution_steps`` is ImageScaleToTotalPixels' input on 0.8.0 (1 = its default; an older server ignores it)."""
    ids = {
        name: f"{prefix}{i}"
        for i, name in enumerate(
            ("unet", "clip", "vae", "scale", "latent", "positive", "negative", "aura", "norm", "sampler", "decode")
        )
    }
    nodes = {
        ids["unet"]: {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": Path(transformer).name, "weight_dtype": "default"},
        },
        ids["clip"]: {
            "class_type": "CLIPLoader",
            "inputs": {"clip_name": Path(text_encoder).name, "type": "qwen_image", "device": "default"},
        },
        ids["vae"]: {"class_type": "VAELoader", "inputs": {"vae_name": Path(vae).name}},
        ids["scale"]: {
            "class_type": "ImageScaleToTotalPixels",
            "inputs": {"image": image, "upscale_method": "lanczos", "megapixels": 1.0, "resolution_steps": 1},
        },
        ids["latent"]: {"class_type": "VAEEncode", "inputs": {"pixels": [ids["scale"], 0], "vae": [ids["vae"], 0]}},
    }
    for name, text in (("positive", prompt), ("negative", "")):
        nodes[ids[name]] = {
            "class_type": "TextEncodeQwenImageEditPlus",
            "inputs": {"clip": [ids["clip"], 0], "prompt": text, "vae": [ids["vae"], 0], "image1": [ids["scale"], 0]},
        }
    model = [ids["unet"], 0]
    if not bare:
        nodes[ids["aura"]] = {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": model, "shift": 3.0}}
        nodes[ids["norm"]] = {"class_type": "CFGNorm", "inputs": {"model": [ids["aura"], 0], "strength": 1.0}}
        model = [ids["norm"], 0]
    nodes[ids["sampler"]] = {
        "class_type": "KSampler",
        "inputs": {
            "model": model,
            "seed": seed,
            "steps": steps,
            "cfg": cfg,
            "sampler_name": "euler",
            "scheduler": "simple",
            "positive": [ids["positive"], 0],
            "negative": [ids["negative"], 0],
            "latent_image": [ids["latent"], 0],
            "denoise": 1.0,
        },
    }
    nodes[ids["decode"]] = {
        "class_type": "VAEDecode",
        "inputs": {"samples": [ids["sampler"], 0], "vae": [ids["vae"], 0]},
    }
    for node in nodes.values():
        node["_meta"] = {"title": f"ComfyUI native {node['class_type']}"}
    return nodes, [ids["decode"], 0]


# ---- run-native -----------------------------------------------------------------------------------


class Meter:
    """Phase seconds and peaks (counters reset per phase), and step ends from ComfyUI's progress hook."""

    def __init__(self, cuda: bool) -> None:
        import torch

        self.torch = torch
        self.cuda = cuda
        self.phases: dict[str, dict] = {}
        self.phase: str | None = None
        self.step_ends: list[float] = []
        self.denoise_start: float | None = None

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def begin(self, name: str) -> None:
        self.sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        self.phase = name
        self.phases[name] = {"start": time.perf_counter()}

    def end(self) -> None:
        self.sync()
        record = self.phases[self.phase]
        record["seconds"] = time.perf_counter() - record.pop("start")
        if self.cuda:
            record["peak_reserved_bytes"] = self.torch.cuda.max_memory_reserved()
            record["peak_allocated_bytes"] = self.torch.cuda.max_memory_allocated()
            record["reserved_after_bytes"] = self.torch.cuda.memory_reserved()
            record["allocated_after_bytes"] = self.torch.cuda.memory_allocated()
        self.phase = None

    def progress_hook(self, value, total, preview=None, *args, **kwargs) -> None:
        if self.phase == "sample":
            self.sync()
            self.step_ends.append(time.perf_counter())

    def first_call(self, module, inputs) -> None:
        if self.denoise_start is None:
            self.denoise_start = time.perf_counter()

    def steps(self) -> list[float]:
        marks = [self.denoise_start] + self.step_ends if self.denoise_start is not None else self.step_ends
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def _log_collector() -> list[str]:
    import logging

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if len(lines) < 400:
                lines.append(f"{record.levelname}: {record.getMessage()}"[:300])

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger().addHandler(Collect())
    return lines


def reference_name(size: int) -> str:
    return f"qwenfit_reference_{size}.png"


def write_reference(models: Path, size: int) -> Path:
    """``bench.jobs.synthetic_image(size)`` as a PNG in MODELS/input, for ComfyUI's LoadImage."""
    from bench.jobs import synthetic_image

    path = models / "input" / reference_name(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_image(size, "RGB").save(path)
    return path


def load_reference(models: Path, size: int, record: dict):
    """The reference through ComfyUI's LoadImage (input folder MODELS/input). Without the PNG (``write``
    makes it) it is made here, which imports the pack's ``bench.jobs`` (and ``optim``) into this process."""
    import folder_paths

    import nodes

    if not (models / "input" / reference_name(size)).is_file():
        write_reference(models, size)
        record["reference_made_in_process"] = True
    folder_paths.set_input_directory(str((models / "input").resolve()))
    image, _mask = nodes.LoadImage().load_image(reference_name(size))
    return image


def run_native(a: argparse.Namespace) -> dict:
    """One generation through ComfyUI's nodes (see the module docstring); returns the record."""
    lines = _log_collector()
    cuda = a.device == "cuda"
    if not cuda and a.card != "none":
        raise SystemExit("--card needs --device cuda (use --card none on the CPU)")
    setup = setup_comfy(a.comfy, a.device, a.disable_cuda_malloc)
    import torch

    emulation = emulate_card(a.card) if cuda else None
    import comfy.model_management as mm  # sizes itself from the (patched) mem_get_info here
    import comfy.utils
    import comfyui_version

    if a.no_fp8_compute:  # ComfyUI's own bf16 computation of the same fp8 file: its 8-bit path's deviation baseline
        mm.supports_fp8_compute = lambda device=None: False
    import folder_paths
    from comfy_extras.nodes_cfg import CFGNorm
    from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow
    from comfy_extras.nodes_post_processing import ImageScaleToTotalPixels
    from comfy_extras.nodes_qwen import TextEncodeQwenImageEditPlus

    import nodes

    tiny = patch_tiny_sizes() if a.arch == TINY else None
    for folder in ("diffusion_models", "text_encoders", "vae"):
        folder_paths.add_model_folder_path(folder, str((a.models / folder).resolve()), is_default=True)
    transformer = LAYOUTS.get(a.transformer, a.transformer)
    layout = next((k for k, v in LAYOUTS.items() if v == transformer), Path(transformer).stem)
    unet_name = Path(transformer).name
    text_encoder, vae_name = Path(a.text_encoder or TEXT_ENCODER).name, Path(a.vae or VAE).name

    meter = Meter(cuda)
    comfy.utils.set_progress_bar_global_hook(meter.progress_hook)
    record: dict = {
        "runner": f"ComfyUI {comfyui_version.__version__} native",
        "card": a.card,
        "layout": layout,
        "files": {"transformer": unet_name, "text_encoder": text_encoder, "vae": vae_name},
        "arch": a.arch,
        "steps": a.steps,
        "size": a.size,
        "cfg": a.cfg,
        "template_patches": not a.bare,
        "fp8_compute": "off (bench)" if a.no_fp8_compute else "ComfyUI's default",
        "comfyui_version": comfyui_version.__version__,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if cuda else "cpu",
        "allocator": torch.cuda.get_allocator_backend() if cuda else None,
        "emulation": emulation,
        "comfy_total_vram_mib": mm.total_vram,
        "comfy_vram_state": mm.vram_state.name,
        "comfy_offload_streams": mm.NUM_STREAMS,
        "comfy_max_pinned_bytes": mm.MAX_PINNED_MEMORY,
        "comfy_extra_reserved_bytes": mm.EXTRA_RESERVED_VRAM,
        "comfy_setup": setup,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "phases": meter.phases,
        "comfy_log": lines,
        "tiny_sizes": tiny,
    }
    latent_path = a.out.with_suffix(".safetensors") if a.out else None
    try:
        with torch.inference_mode():
            start = time.perf_counter()
            meter.begin("load")
            (model,) = nodes.UNETLoader().load_unet(unet_name, "default")
            (clip,) = nodes.CLIPLoader().load_clip(text_encoder, "qwen_image", "default")
            (vae,) = nodes.VAELoader().load_vae(vae_name)
            meter.end()
            record["load_seconds"] = meter.phases["load"]["seconds"]
            record["unet_dtype"] = str(model.model.get_dtype())
            record["unet_manual_cast"] = str(model.model.manual_cast_dtype)

            meter.begin("encode")
            image = load_reference(a.models, a.size, record)
            # 0.8.0 added resolution_steps (1: its default); 0.3.75 takes three inputs.
            steps_input = "resolution_steps" in inspect.signature(ImageScaleToTotalPixels.execute).parameters
            image = ImageScaleToTotalPixels.execute(image, "lanczos", 1.0, *((1,) if steps_input else ()))[0]
            (latent,) = nodes.VAEEncode().encode(vae, image)
            positive = TextEncodeQwenImageEditPlus.execute(clip, PROMPT, vae=vae, image1=image)[0]
            negative = TextEncodeQwenImageEditPlus.execute(clip, "", vae=vae, image1=image)[0]
            meter.end()

            if not a.bare:
                (model,) = ModelSamplingAuraFlow().patch_aura(model, 3.0)
                model = CFGNorm.execute(model, 1.0)[0]
            hook = model.model.diffusion_model.register_forward_pre_hook(meter.first_call)
            meter.begin("sample")
            (samples,) = nodes.KSampler().sample(
                model, a.seed, a.steps, a.cfg, "euler", "simple", positive, negative, latent, denoise=1.0
            )
            meter.end()
            hook.remove()

            meter.begin("decode")
            (decoded,) = nodes.VAEDecode().decode(vae, samples)
            meter.end()
            record["first_image_seconds"] = time.perf_counter() - start
        steps = meter.steps()
        record["step_seconds"] = steps
        record["denoise_start_seen"] = meter.denoise_start is not None
        record["seconds_per_step"] = meter.phases["sample"]["seconds"] / a.steps
        steady = steps[1:] if len(steps) >= 2 else steps
        record["seconds_per_step_steady"] = sum(steady) / len(steady) if steady else None
        final = samples["samples"].float().cpu().contiguous()
        record["latent_shape"] = list(final.shape)
        record["latent_finite"] = bool(torch.isfinite(final).all())
        record["image_shape"] = list(decoded.shape)
        record["image_mean"] = float(decoded.float().mean())
        record["image_finite"] = bool(torch.isfinite(decoded).all())
        if latent_path:
            from safetensors.torch import save_file

            latent_path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"latent": final, "image": decoded.float().cpu().contiguous()}, str(latent_path))
            record["latent_file"] = latent_path.name
    except Exception as error:  # an OOM included: the record keeps what was measured
        if meter.phase is not None:
            meter.phases[meter.phase]["failed"] = True
            meter.phases[meter.phase].pop("start", None)
        record["error"] = f"{type(error).__name__}: {error}"[:2000]
        record["oom"] = isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
        record["traceback"] = traceback.format_exc()[-4000:]
    peaks = [p for p in meter.phases.values() if "peak_reserved_bytes" in p]
    record["peak_reserved_bytes"] = max((p["peak_reserved_bytes"] for p in peaks), default=None)
    record["peak_allocated_bytes"] = max((p["peak_allocated_bytes"] for p in peaks), default=None)
    record["host_rss_peak_bytes"] = _host_rss_peak()
    return record


def run_qwenfit(a: argparse.Namespace) -> dict:
    """The pack on the same files, job and card: its loader (precision auto: fp8 as stored) at ``--speed``,
    then ``run_edit`` ``--images`` times (2: the first run carries the warm-up; the last gives the steady s/step;
    more show when blocks compiled in the background take over)."""
    import torch

    from bench.jobs import synthetic_image
    from optim import EditJob, LoadRequest, OffloadSettings, PrecisionSettings, SplitFiles, load_pipeline, run_edit
    from optim.execution.arena_fill import current_stats

    cuda = a.device == "cuda"
    card = {"8": "8 GB", "24": "24 GB", "none": "unlimited"}[a.card]
    if cuda and CARDS[a.card] is not None:  # the allocator refuses what the card would not hold
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(CARDS[a.card][1] * GIB / total)
    transformer = LAYOUTS.get(a.transformer, a.transformer)
    layout = next((k for k, v in LAYOUTS.items() if v == transformer), Path(transformer).stem)
    tokenizer = a.tokenizer or a.comfy / "comfy" / "text_encoders" / "qwen25_tokenizer"  # the tree's own
    source = SplitFiles(a.models / transformer, a.models / TEXT_ENCODER, a.models / VAE, tokenizer)
    record: dict = {"runner": f"QwenFit {card} preset, speed {a.speed}", "card": a.card, "layout": layout}
    if a.host_budget != "auto":
        record["runner"] += f", host budget {a.host_budget}"
    from optim.loading.library_imports import import_libraries

    # In ComfyUI the pack imports these while the server starts (nodes/__init__.py); a fresh process pays here.
    record["import_seconds"] = import_libraries()
    if a.readers:  # an experiment: fewer file-reader threads than optim.files.parallel_reads.READERS
        from concurrent.futures import ThreadPoolExecutor

        import optim.files.parallel_reads as parallel_reads

        parallel_reads._pool = ThreadPoolExecutor(max_workers=a.readers, thread_name_prefix="qwenfit-file-reader")
        record["runner"] += f", {a.readers} readers"
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
        record["runner"] += f", {a.torch_threads} torch threads"
    from bench.host_ram import AvailableLow

    available = AvailableLow()  # the system's MemAvailable drop, loading included
    try:
        start = start_clock = time.perf_counter()
        request = LoadRequest(
            source,
            precision=PrecisionSettings(speed=a.speed),
            offload=OffloadSettings(
                vram_budget=card, mode="none" if a.card == "none" else "auto", host_budget=a.host_budget
            ),
            device=a.device,
        )
        loaded = load_pipeline(request)
        record["load_seconds"] = time.perf_counter() - start
        if a.drop_cache_every:  # a machine whose page cache cannot hold the files: every read comes from the disk
            record["runner"] += f", file pages dropped every {a.drop_cache_every} s"
            _drop_pages_every(a.drop_cache_every, [a.models / transformer])
        if a.gguf_eager:  # an experiment: GGUF blocks expanded without torch.compile
            from optim.quant.gguf import compile_expansions

            compile_expansions(loaded.pipeline.transformer, compiled=False)
            record["runner"] += ", GGUF expansion eager"
        host = loaded.host
        record["host_plan"] = {
            "budget_bytes": host.budget_bytes,
            "predicted_bytes": host.predicted_bytes,
            "text_encoder": host.text_encoder,
            "modulation": host.modulation,
            "blocks_in_files": host.blocks_in_files,
            "read_ahead": host.read_ahead,
        }
        record["load_phases"] = loaded.load_times.phases if loaded.load_times is not None else None
        image = synthetic_image(1024, "RGB")
        runs = []
        for seed in range(a.seed, a.seed + max(2, a.images)):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            job = EditJob(
                PROMPT, negative_prompt="", true_cfg_scale=a.cfg, steps=a.steps, seed=seed, width=1024, height=1024
            )
            result = run_edit(loaded, [image], job)
            if "first_image_seconds" not in record:
                record["first_image_seconds"] = time.perf_counter() - start
                if a.out:  # the first image, to compare rungs (and ComfyUI's rows) on the same seed
                    from safetensors.torch import save_file

                    save_file(
                        {"image": result.image.float().cpu().contiguous()}, str(a.out.with_suffix(".safetensors"))
                    )
                fill = current_stats()  # the weights read in the background while the first image ran
                record["background_fill"] = {
                    "bytes": fill.bytes_read,
                    "seconds": (fill.finished - fill.started) if fill.finished else None,
                    "read_seconds": fill.read_seconds,
                    "lock_seconds": fill.lock_seconds,
                    "since_load_start": (fill.finished - start_clock) if fill.finished else None,
                }
            denoise = next(p for p in result.record.phases if p.name == "denoise")
            runs.append(
                {
                    "seconds": result.seconds,
                    "denoise_seconds": denoise.seconds,
                    "peak": result.record.peak_reserved,
                    "phases": {p.name: p.seconds for p in result.record.phases},  # where a first run's time went
                    "s_per_step": denoise.seconds / a.steps,
                    "compile": next(
                        (
                            ln.strip()
                            for ln in result.report.splitlines()
                            if "compiled blocks" in ln or "compile failed" in ln
                        ),
                        None,
                    ),
                }
            )
            record["plan"] = result.record.plan
        record["runs"] = runs
        record["seconds_per_step_steady"] = runs[-1]["denoise_seconds"] / a.steps  # second run, every step
        if a.loras:
            record["lora_stack"] = _lora_stack_rows(a, loaded, image, cuda)
        record["peak_reserved_bytes"] = max(r["peak"] for r in runs)
        record["peak_allocated_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
        record["host_rss_peak_bytes"] = _host_rss_peak()
        record["available_drop_bytes"] = available.stop()
    except Exception as error:
        record["error"] = f"{type(error).__name__}: {error}"[:2000]
        record["traceback"] = traceback.format_exc()[-4000:]
    return record


def _drop_pages_every(seconds: float, paths: list[Path]) -> None:
    """Drop ``paths``' pages from the page cache every ``seconds`` on a daemon thread (posix_fadvise, no root)."""
    import os
    import threading

    def drop() -> None:
        while True:
            for path in paths:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
            time.sleep(seconds)

    threading.Thread(target=drop, daemon=True).start()


def _lora_stack_rows(a: argparse.Namespace, loaded, image, cuda: bool) -> dict:
    """The same job with a stack of ``a.loras`` random rank-64 LoRAs (lightx2v and PEFT styles alternating),
    then with one strength changed, then with one LoRA removed: s/step against the same pipeline without LoRAs,
    and what each change cost (the view, then the run's seconds over the steady run's)."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    # The tests' helpers import their server client's websocket package, which a bench machine may lack
    # (writing a LoRA file never uses it).
    sys.modules.setdefault("websocket", types.ModuleType("websocket"))
    from real_size import write_real_size_lora

    from optim import EditJob, LoraChoice, LoraStack, run_edit

    folder = a.models / "loras"
    folder.mkdir(exist_ok=True)
    start = time.perf_counter()
    files = [
        write_real_size_lora(folder / f"bench_{i}.safetensors", ("lightx2v", "peft")[i % 2], seed=i)
        for i in range(a.loras)
    ]
    out: dict = {"write_seconds": time.perf_counter() - start, "runs": []}
    job = EditJob(PROMPT, negative_prompt="", true_cfg_scale=a.cfg, steps=a.steps, seed=a.seed, width=1024, height=1024)
    stacks = [
        ("stack, first run", LoraStack(tuple(LoraChoice(Path(f)) for f in files))),
        ("stack, steady", None),
        ("first strength 0.5", LoraStack((LoraChoice(Path(files[0]), 0.5), *(LoraChoice(Path(f)) for f in files[1:])))),
        ("first removed", LoraStack(tuple(LoraChoice(Path(f)) for f in files[1:]))),
    ]
    view = loaded
    for name, stack in stacks:
        begin = time.perf_counter()
        if stack is not None:
            view = loaded.with_loras(stack)
        made = time.perf_counter() - begin
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result = run_edit(view, [image], job)
        denoise = next(p for p in result.record.phases if p.name == "denoise")
        out["runs"].append(
            {
                "name": name,
                "view_seconds": made,
                "seconds": result.seconds,
                "denoise_seconds": denoise.seconds,
                "seconds_per_step": denoise.seconds / a.steps,
                "peak": result.record.peak_reserved,
            }
        )
    out["plan"] = result.record.plan
    return out


def _host_rss_peak() -> int | None:
    """The process's peak resident memory (VmHWM), Linux only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---- table ----------------------------------------------------------------------------------------


def _num(value, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def latent_deviation(result: dict, reference: Path) -> tuple[float, float] | None:
    """``||a - b|| / ||b||`` and ``max |a - b|`` of a result's final latent (the ``latent_file`` next to its
    JSON, ``_path``) against the ``reference`` latent; None when either is missing or the shapes differ."""
    from safetensors.torch import load_file

    name, path = result.get("latent_file"), result.get("_path")
    if not name or not path or not (Path(path).parent / name).is_file() or not reference.is_file():
        return None
    a = load_file(str(Path(path).parent / name))["latent"].double()
    b = load_file(str(reference))["latent"].double()
    if a.shape != b.shape:
        return None
    return float((a - b).norm() / b.norm()), float((a - b).abs().max())


def table(results: list[dict], reference: Path | None = None) -> str:
    """A Markdown table of run results: any dicts with ROW_KEYS (a missing key prints as "-"). With
    ``reference`` (a latent .safetensors, key "latent"), the final latents' deviation from it."""
    head = (
        "| runner | card | file layout | s/step steady | load s | weights in host memory s | first image s "
        "| peak reserved GiB | peak allocated GiB | host RSS peak GiB "
    )
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    if reference is not None:
        head, rule = head + "| latent rel L2 / max abs ", rule + "---|"
    lines = [head + "| notes |", rule + "---|"]
    for r in results:
        card = {"none": "whole GPU"}.get(str(r.get("card")), f"{r.get('card')} GB")
        notes = r.get("error", "")
        if r.get("allocator") == "cudaMallocAsync" and r.get("emulation"):
            notes = "; ".join(x for x in (notes, "cudaMallocAsync: the cap is on allocated bytes") if x)
        notes = notes.replace("|", "/").replace("\n", " ")[:160]
        row = (
            f"| {r.get('runner', '-')} | {card} | {r.get('layout', '-')} | {_num(r.get('seconds_per_step_steady'), 1, 3)} "
            f"| {_num(r.get('load_seconds'), 1, 1)} | {_num((r.get('background_fill') or {}).get('since_load_start'), 1, 1)} "
            f"| {_num(r.get('first_image_seconds'), 1, 1)} "
            f"| {_num(r.get('peak_reserved_bytes'), GIB)} | {_num(r.get('peak_allocated_bytes'), GIB)} "
            f"| {_num(r.get('host_rss_peak_bytes'), GIB)} "
        )
        if reference is not None:
            deviation = latent_deviation(r, reference)
            row += f"| {deviation[0]:.4f} / {deviation[1]:.3g} " if deviation else "| - "
        lines.append(row + f"| {notes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("write", "run-native", "run-qwenfit", "table"))
    parser.add_argument("--loras", type=int, default=0, help="run-qwenfit: then a stack of N random rank-64 LoRAs")
    parser.add_argument("--readers", type=int, default=0, help="run-qwenfit: file-reader threads (experiment)")
    parser.add_argument("--torch-threads", type=int, default=0, help="run-qwenfit: torch.set_num_threads (experiment)")
    parser.add_argument("--gguf-eager", action="store_true", help="run-qwenfit: GGUF expansion without torch.compile")
    parser.add_argument(
        "--drop-cache-every", type=float, default=0, help="run-qwenfit: drop the file's pages every S s"
    )
    parser.add_argument("--host-budget", default="auto", help="run-qwenfit: the host budget (e.g. 24 GB)")
    parser.add_argument("--speed", default="fast", help="run-qwenfit: the speed rung (exact, fast, fastest)")
    parser.add_argument(
        "--images", type=int, default=2, help="run-qwenfit: images in a row (the last gives the steady s/step)"
    )
    parser.add_argument("--tokenizer", type=Path, help="write: ComfyUI's comfy/text_encoders/qwen25_tokenizer")
    parser.add_argument("--models", type=Path)
    parser.add_argument("--layout", default="scaled,e4m3fn", help="write: transformer layouts, comma-separated")
    parser.add_argument("--comfy", type=Path, default=REPO / ".cache" / "comfyui")
    parser.add_argument("--transformer", default="scaled", help="scaled, e4m3fn, or a file name in diffusion_models")
    parser.add_argument("--text-encoder", help="file name in text_encoders (default: the written one)")
    parser.add_argument("--vae", help="file name in vae (default: the written one)")
    parser.add_argument("--card", choices=tuple(CARDS), default="none")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=1024, help="side of the synthetic reference image")
    parser.add_argument("--bare", action="store_true", help="without the template's ModelSamplingAuraFlow/CFGNorm")
    parser.add_argument("--no-fp8-compute", action="store_true", help="run-native: ComfyUI computes fp8 files in bf16")
    parser.add_argument("--disable-cuda-malloc", action="store_true", help="ComfyUI's flag: torch's native allocator")
    parser.add_argument("--arch", default="qwen-image", help="qwenfit-tiny for the CPU check")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--reference", type=Path, help="table: a latent .safetensors to compare the rows' latents with")
    parser.add_argument("results", nargs="*", type=Path)
    a = parser.parse_intermixed_args(argv)
    if a.command == "table":
        print(table([{**json.loads(p.read_text()), "_path": str(p)} for p in a.results], a.reference))
        return 0
    if a.command == "write":
        result = write(a.tokenizer, a.models, a.layout.split(","), a.arch, a.device, a.size)
    elif a.command == "run-qwenfit":
        result = run_qwenfit(a)
    else:
        result = run_native(a)
    text = json.dumps(result, indent=1, default=str)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    if a.command == "write":
        print(text)
    else:
        summary = ROW_KEYS + ("unet_dtype", "step_seconds", "latent_finite", "image_mean", "error")
        print(json.dumps({k: result.get(k) for k in summary}, default=str))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
