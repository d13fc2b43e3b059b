"""The bundled preset workflows, described once, written as UI format (example_workflows/) and API twins.

Run ``make workflows`` after changing a preset or a node's inputs: it starts the real
ComfyUI test host (for /object_info) and rewrites both files. The tests check that each
API twin still equals the conversion of its UI workflow.
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .workflow_format import VIRTUAL_NODES, ui_to_api, widget_names

REPO = Path(__file__).resolve().parent.parent
UI_DIR = REPO / "example_workflows"
API_DIR = REPO / "tests" / "workflows"
SAMPLE_IMAGE = "qwenfit_sample.png"
# The sample with the sun transparent: Load Image's MASK is 1 there (mask = 1 - alpha), the region to edit.
MASKED_SAMPLE_IMAGE = "qwenfit_sample_masked.png"
INPUT_IMAGES = (SAMPLE_IMAGE, MASKED_SAMPLE_IMAGE)

# Comfy-Org's file names, as users have them; the tests and the demo swap in the tiny models.
EDIT_MODEL = "qwen_image_edit_2509_fp8_e4m3fn.safetensors"
LAYERED_MODEL = "qwen_image_layered_fp8mixed.safetensors"
TEXT_ENCODER = "qwen_2.5_vl_7b_fp8_scaled.safetensors"
EDIT_VAE = "qwen_image_vae.safetensors"
LAYERED_VAE = "qwen_image_layered_vae.safetensors"
_HF = "https://huggingface.co/Comfy-Org"
# Where each file comes from, for the frontend's missing-models dialog (it offers the download; the pack
# itself never downloads): {name: (ComfyUI model folder, URL)}.
MODEL_FILES = {
    EDIT_MODEL: (
        "diffusion_models",
        f"{_HF}/Qwen-Image-Edit_ComfyUI/resolve/main/split_files/diffusion_models/{EDIT_MODEL}",
    ),
    LAYERED_MODEL: (
        "diffusion_models",
        f"{_HF}/Qwen-Image-Layered_ComfyUI/resolve/main/split_files/diffusion_models/{LAYERED_MODEL}",
    ),
    TEXT_ENCODER: ("text_encoders", f"{_HF}/Qwen-Image_ComfyUI/resolve/main/split_files/text_encoders/{TEXT_ENCODER}"),
    EDIT_VAE: ("vae", f"{_HF}/Qwen-Image_ComfyUI/resolve/main/split_files/vae/{EDIT_VAE}"),
    LAYERED_VAE: ("vae", f"{_HF}/Qwen-Image-Layered_ComfyUI/resolve/main/split_files/vae/{LAYERED_VAE}"),
}
# The files each kind of preset needs: (transformer, text encoder, VAE), as its loader names them.
PRESET_FILES = {"edit": (EDIT_MODEL, TEXT_ENCODER, EDIT_VAE), "layered": (LAYERED_MODEL, TEXT_ENCODER, LAYERED_VAE)}
# The loader's inputs that name a file. The frontend offers a missing file only when a combo's value names it
# (frontend 1.58 scans the widgets; `auto` names nothing), so the presets name every file instead of `auto`.
FILE_INPUTS = ("model", "text_encoder", "vae", "lora")


def model_entry(name: str) -> dict[str, str]:
    """One file as the frontend's model metadata describes it."""
    directory, url = MODEL_FILES[name]
    return {"name": name, "url": url, "directory": directory}


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    size: tuple[int, int] = (320, 160)


@dataclass
class Preset:
    name: str  # file stem
    title: str
    nodes: list[Node]
    links: list[tuple[int, str, int, str]]  # (from node, output name, to node, input name)


# The layout, in canvas units. The frontends draw a node taller than its saved size wherever its content needs
# it, each renderer and frontend differently, and the classic canvas draws the title bar above ``pos``. Measured
# (2026-12, frontends 1.32.9 and 1.58.1, each renderer), title included: Precision 164 to 200, Offload 210 to 256,
# VAE Tiling 112 to 144, the loader 260 to 372 with its plan badge, Instruct Edit up to 580, the notes up to 345.
# So each column holds nodes of one width, the nodes in a column stand ROW_GAP apart beyond their tallest
# drawing, and the nodes that grow most (notes, run nodes, monitors) have nothing below them.
# tests/browser/test_preset_layout.py checks every preset in each frontend and renderer.
TITLE_H = 30
COLUMN_GAP = 60
ROW_GAP = 80
NOTE_X, NOTE_W = 0, 420
SETTINGS_X, SETTINGS_W = NOTE_X + NOTE_W + COLUMN_GAP, 300
LOADER_X, LOADER_W = SETTINGS_X + SETTINGS_W + COLUMN_GAP, 320
RUN_X, RUN_W = LOADER_X + LOADER_W + COLUMN_GAP, 360
OUTPUT_X, OUTPUT_W = RUN_X + RUN_W + COLUMN_GAP, 420
# Each node's top (``pos``) below the tallest drawing of the node above it.
PRECISION_Y = 0
OFFLOAD_Y = PRECISION_Y + 200 + ROW_GAP
VAE_Y = OFFLOAD_Y + 260 + ROW_GAP
IMAGE_Y = 380 + 2 * ROW_GAP  # below the loader, whose badge may gain a few lines
SAVE_H, PREVIEW_H = 400, 300  # drawn as saved
BELOW_SAVE_Y = SAVE_H + TITLE_H + ROW_GAP
BELOW_PREVIEW_Y = BELOW_SAVE_Y + PREVIEW_H + TITLE_H + ROW_GAP
# Where the frontend opens a preset: the notes at the left edge, all the columns in view on a 1920 px screen.
VIEW = {"scale": 0.75, "offset": [20, 60]}


def _note(node_id: int, text: str) -> Node:
    """The notes, in the first column with nothing below them (a note is drawn as tall as its text)."""
    return Node(node_id, "MarkdownNote", (NOTE_X, 0), {"text": text}, title="Read me", size=(NOTE_W, 260))


EDIT_FILES = """Files (Comfy-Org's repackaged ones; press R after copying):
- `models/diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors` (or 2509/2511 bf16 or fp8mixed)
- `models/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors`
- `models/vae/qwen_image_vae.safetensors`

A diffusers folder in `models/diffusers/` works too (pick it as the model).
Output size: about 1 megapixel at the first reference's aspect ratio (width/height 0)."""

LAYERED_FILES = """Files (Comfy-Org's repackaged ones; press R after copying):
- `models/diffusion_models/qwen_image_layered_fp8mixed.safetensors` (or bf16)
- `models/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors`
- `models/vae/qwen_image_layered_vae.safetensors` (the 4-channel one)

An empty prompt lets the model caption the picture itself (a 7B text generation: slower).
Outputs: RGB layers bottom first, their masks (1 = transparent, as Load Image), a preview; tick
save_psd for a layered PSD."""


@dataclass(frozen=True)
class Profile:
    """The settings nodes' values for one kind of machine."""

    key: str
    title: str
    precision: dict[str, str]
    offload: tuple[str, str]  # (mode, VRAM budget)
    vae: dict[str, str]
    note: str
    gpus: str = "one"  # "all": every visible GPU (the multi-GPU presets)


AUTO_PRECISION = {"transformer": "auto", "text_encoder": "auto", "vae": "auto"}
AUTO_VAE = {"tiling": "auto", "slicing": "auto"}
PROFILES = (
    Profile(
        "auto",
        "auto plan",
        AUTO_PRECISION,
        ("auto", "auto"),
        AUTO_VAE,
        "Settings on *auto*: the planner fits the memory free on your GPU when the model loads.",
    ),
    Profile(
        "8gb",
        "8 GB GPU",
        AUTO_PRECISION,
        ("auto", "8 GB"),
        AUTO_VAE,
        "For 8 GB cards: the plan keeps the whole generation under 7.0 GiB. A few transformer blocks stay on "
        "the GPU, the rest stream from pinned host RAM one block ahead; modulation is precomputed and CFG "
        "runs as one batched pass. Measured on an H200 emulating 8 GB: 5.5 GiB peak at 0.99x the speed of "
        "diffusers with everything resident (README). Host RAM: about 51 GiB for bf16 files, 26 GiB for fp8.",
    ),
    Profile(
        "24gb",
        "24 GB GPU",
        AUTO_PRECISION,
        ("auto", "24 GB"),
        AUTO_VAE,
        "For 24 GB cards: the plan keeps the whole generation under 22 GiB, about 37 of 60 blocks resident. "
        "Measured on an H200 emulating 24 GB: 19.4 GiB peak at 0.99x the speed of diffusers fully resident.",
    ),
    Profile(
        "8gb_fast",
        "8 GB GPU, fast",
        {**AUTO_PRECISION, "speed": "fast"},
        ("auto", "8 GB"),
        AUTO_VAE,
        "The 8 GB plan on the *fast* speed rung: the transformer multiplies in 8 bits (fp8 on RTX 40xx/50xx and "
        "newer, int8 on RTX 20xx/30xx), activations quantized per token, blocks compiled where Triton is "
        "installed. Measured on an H200 emulating 8 GB (Edit 1024, fp8 weights): 0.45 s/step, 0.61x diffusers "
        "resident bf16 and about a third of ComfyUI 0.3.75's own nodes on the same file and card, peak 5.4 GiB. The "
        "image differs a little from *exact* (final latents 5.7e-2 relative L2 on random test weights; the "
        "fp8 file itself is 3.9e-2 from bf16). Set speed to exact for the reference numbers.",
    ),
    Profile(
        "24gb_fast",
        "24 GB GPU, fast",
        {**AUTO_PRECISION, "speed": "fast"},
        ("auto", "24 GB"),
        AUTO_VAE,
        "The 24 GB plan on the *fast* speed rung (8-bit products, compiled blocks; see the 8 GB fast preset). "
        "Measured on an H200 emulating 24 GB (Edit 1024, fp8 weights, before fp8 fast accumulation): 0.47 s/step, "
        "0.64x diffusers resident bf16, peak 17.8 GiB.",
    ),
    Profile(
        "multigpu",
        "multi-GPU rig",
        AUTO_PRECISION,
        ("auto", "auto"),
        AUTO_VAE,
        "For rigs with two or more GPUs (Offload: gpus *all*). The planner uses every visible GPU within the "
        "memory free on each. When each GPU holds the whole transformer, the prompt and the negative prompt "
        "compute at the same time, one per GPU (CFG-parallel: 0.51x the time per step of one GPU, same "
        "image, measured on 2 H200). Otherwise the blocks split over the GPUs, so two 24 GB cards run bf16 "
        "without streaming (measured: 21.3 and 11.2 GiB). With one GPU or none the preset runs there, and "
        "the report says what it fell back to.",
        gpus="all",
    ),
)


def _settings_nodes(start_id: int, profile: Profile) -> list[Node]:
    return [
        Node(
            start_id,
            "QwenFitPrecisionSelector",
            (SETTINGS_X, PRECISION_Y),
            dict(profile.precision),
            size=(SETTINGS_W, 134),
        ),
        Node(
            start_id + 1,
            "QwenFitOffloadToggle",
            (SETTINGS_X, OFFLOAD_Y),
            {
                "mode": profile.offload[0],
                "vram_budget": profile.offload[1],
                "host_budget": "auto",
                "cfg": "batched",
                "gpus": profile.gpus,
                "multi_gpu": "auto",
            },
            size=(SETTINGS_W, 180),
        ),
        Node(start_id + 2, "QwenFitVAESlicer", (SETTINGS_X, VAE_Y), dict(profile.vae), size=(SETTINGS_W, 80)),
    ]


def _settings_links(start_id: int, loader_id: int) -> list[tuple[int, str, int, str]]:
    return [
        (start_id, "precision", loader_id, "precision"),
        (start_id + 1, "offload", loader_id, "offload"),
        (start_id + 2, "vae_settings", loader_id, "vae_settings"),
    ]


def _monitor(node_id: int, pos: tuple[int, int]) -> Node:
    """The VRAM monitor after the run node: its report and a chart of the run's memory."""
    return Node(node_id, "QwenFitVRAMMonitor", pos, {}, title="QwenFit VRAM Monitor (last run)", size=(OUTPUT_W, 330))


def _loader(node_id: int, kind: str) -> Node:
    """The loader, naming each file the preset needs (Comfy-Org's names)."""
    model, text_encoder, vae = PRESET_FILES[kind]
    return Node(
        node_id,
        "QwenFitOptimizedLoader",
        (LOADER_X, 0),
        {"model": model, "text_encoder": text_encoder, "vae": vae},
        size=(LOADER_W, 230),
    )


def edit_preset(profile: Profile) -> Preset:
    note = f"**QwenFit - Instruct Edit ({profile.title})**\n\n{EDIT_FILES}\n\n{profile.note}"
    return Preset(
        name=f"qwenfit_edit_{profile.key}",
        title=f"QwenFit Edit ({profile.title})",
        nodes=[
            _note(1, note),
            *_settings_nodes(2, profile),
            _loader(5, "edit"),
            Node(6, "LoadImage", (LOADER_X, IMAGE_Y), {"image": SAMPLE_IMAGE}, size=(LOADER_W, 320)),
            Node(
                7,
                "QwenFitInstructEdit",
                (RUN_X, 0),
                {
                    "prompt": "Paint the house blue and add snow on the roof.",
                    "negative_prompt": " ",
                    "true_cfg_scale": 4.0,
                    "steps": 40,
                    "seed": 42,
                    "width": 0,
                    "height": 0,
                },
                size=(RUN_W, 420),
            ),
            Node(8, "SaveImage", (OUTPUT_X, 0), {"filename_prefix": "QwenFit/edit"}, size=(OUTPUT_W, SAVE_H)),
            _monitor(9, (OUTPUT_X, BELOW_SAVE_Y)),
        ],
        links=[
            *_settings_links(2, 5),
            (5, "pipeline", 7, "pipeline"),
            (6, "IMAGE", 7, "image"),
            (7, "edited", 8, "images"),
            (7, "report", 9, "anything"),
        ],
    )


MASKED_NOTE = """**Masked edit**: Load Image's MASK (its picture's transparent pixels, or what you paint in the
mask editor: right-click the image > Open in MaskEditor) marks what to change; 1 = edit. Instruct Edit
edits a crop around the mask (context_margin px around its box) at about 1 megapixel, then pastes it back
with a feathered edge (feather px): every pixel outside the feathered mask is the input's own, and the
output keeps the input's size. Here the sun is transparent in the input, so only the sun changes.
mask_mode off ignores the mask; an empty mask is refused (nothing to edit)."""


def masked_edit_preset(profile: Profile) -> Preset:
    """Instruct Edit with a mask: one object of the sample changes, nothing else moves."""
    preset = edit_preset(profile)
    note = f"**QwenFit - Instruct Edit, masked ({profile.title})**\n\n{EDIT_FILES}\n\n{MASKED_NOTE}"
    nodes = [
        _note(1, note) if n.id == 1 else Node(n.id, n.type, n.pos, dict(n.widgets), n.title, n.size)
        for n in preset.nodes
    ]
    for node in nodes:
        if node.type == "LoadImage":
            node.widgets["image"] = MASKED_SAMPLE_IMAGE
        if node.type == "QwenFitInstructEdit":
            node.widgets["prompt"] = "Replace the sun with a crescent moon."
            node.widgets.update(mask_mode="crop_and_stitch", context_margin=64, feather=16)
        if node.type == "SaveImage":
            node.widgets["filename_prefix"] = "QwenFit/edit_masked"
    return Preset(
        name="qwenfit_edit_masked",
        title=f"QwenFit Edit, masked ({profile.title})",
        nodes=nodes,
        links=[*preset.links, (6, "MASK", 7, "mask")],
    )


def layered_preset(profile: Profile) -> Preset:
    note = f"**QwenFit - Layered Decompose ({profile.title})**\n\n{LAYERED_FILES}\n\n{profile.note}"
    return Preset(
        name=f"qwenfit_layered_{profile.key}",
        title=f"QwenFit Layered ({profile.title})",
        nodes=[
            _note(1, note),
            *_settings_nodes(2, profile),
            _loader(5, "layered"),
            Node(6, "LoadImage", (LOADER_X, IMAGE_Y), {"image": SAMPLE_IMAGE}, size=(LOADER_W, 320)),
            Node(
                7,
                "QwenFitLayeredDecompose",
                (RUN_X, 0),
                {
                    "layers": 4,
                    "resolution": "640",
                    "prompt": "",
                    "negative_prompt": " ",
                    "true_cfg_scale": 4.0,
                    "steps": 50,
                    "seed": 42,
                    "save_psd": False,
                    "filename_prefix": "QwenFit/layers",
                },
                size=(RUN_W, 480),
            ),
            Node(8, "SaveImage", (OUTPUT_X, 0), {"filename_prefix": "QwenFit/layer"}, size=(OUTPUT_W, SAVE_H)),
            Node(9, "PreviewImage", (OUTPUT_X, BELOW_SAVE_Y), {}, size=(OUTPUT_W, PREVIEW_H)),
            _monitor(10, (OUTPUT_X, BELOW_PREVIEW_Y)),
        ],
        links=[
            *_settings_links(2, 5),
            (5, "pipeline", 7, "pipeline"),
            (6, "IMAGE", 7, "image"),
            (6, "MASK", 7, "mask"),
            (7, "layer_images", 8, "images"),
            (7, "preview", 9, "images"),
            (7, "report", 10, "anything"),
        ],
    )


PRESETS = [make(profile) for make in (edit_preset, layered_preset) for profile in PROFILES]
PRESETS.append(masked_edit_preset(PROFILES[0]))


def write_masked_sample(path: Path) -> None:
    """The sample with the sun (a disc of radius 50 at 640, 100) transparent, a few pixels wider."""
    from PIL import Image, ImageDraw

    image = Image.open(UI_DIR / "inputs" / SAMPLE_IMAGE).convert("RGBA")
    alpha = Image.new("L", image.size, 255)
    ImageDraw.Draw(alpha).ellipse([640 - 56, 100 - 56, 640 + 56, 100 + 56], fill=0)
    image.putalpha(alpha)
    image.save(path)


def write_thumbnail(preset: Preset, path: Path) -> None:
    """A small picture for the template browser: the sample with the preset's name on a band (the masked
    preset's shows its mask as a magenta veil)."""
    from PIL import Image, ImageDraw

    masked = "masked" in preset.name
    source = Image.open(UI_DIR / "inputs" / (MASKED_SAMPLE_IMAGE if masked else SAMPLE_IMAGE))
    image = source.convert("RGB")
    if masked:
        veil = Image.new("RGB", image.size, (255, 0, 200))
        image = Image.composite(Image.blend(image, veil, 0.6), image, source.getchannel("A").point(lambda a: 255 - a))
    image = image.resize((384, 256))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 196, 384, 256], fill=(40, 30, 90))
    draw.text((12, 204), preset.title, fill=(255, 255, 255))
    kind = "layers" if "layered" in preset.name else "masked instruction edit" if masked else "instruction edit"
    draw.text((12, 226), kind, fill=(200, 200, 255))
    image.save(path, quality=85)


def _widget_values(node: Node, info: dict[str, Any] | None) -> list[Any]:
    if info is None:  # notes
        return list(node.widgets.values())
    values: list[Any] = []
    for name, has_control in widget_names(info):
        values.append(node.widgets.get(name, _default(info, name)))
        if has_control:
            values.append("randomize")
    if node.type == "LoadImage":
        values.append("image")  # the upload button's slot, as the frontend saves it
    return values


def _default(info: dict[str, Any], name: str) -> Any:
    for section in ("required", "optional"):
        spec = info["input"].get(section, {}).get(name)
        if spec is not None:
            options = spec[1] if len(spec) > 1 else {}
            if "default" in options:
                return options["default"]
            choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
            return choices[0] if choices else None
    raise KeyError(name)


def _properties(node: Node, info: dict[str, Any] | None) -> dict[str, Any]:
    if info is None:
        return {}
    properties: dict[str, Any] = {"Node name for S&R": node.type}
    # The loader: every file it names, so that the frontend can offer each one when it is missing.
    files = [node.widgets[name] for name in FILE_INPUTS if node.widgets.get(name) in MODEL_FILES]
    if files:
        properties["models"] = [model_entry(name) for name in files]
    return properties


def to_ui(preset: Preset, object_info: dict[str, Any]) -> dict[str, Any]:
    """The UI-format (LiteGraph) workflow of a preset."""
    ui_nodes: dict[int, dict[str, Any]] = {}
    for order, node in enumerate(preset.nodes):
        info = None if node.type in VIRTUAL_NODES else object_info[node.type]
        outputs = []
        if info is not None:
            for slot, (kind, name) in enumerate(zip(info["output"], info["output_name"], strict=True)):
                outputs.append({"name": name, "type": kind, "links": [], "slot_index": slot})
        ui_nodes[node.id] = {
            "id": node.id,
            "type": node.type,
            "pos": list(node.pos),
            "size": list(node.size),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [],
            "outputs": outputs,
            "properties": _properties(node, info),
            "widgets_values": _widget_values(node, info),
            **({"title": node.title} if node.title else {}),
        }
    ui_links = []
    for link_id, (src, out_name, dst, in_name) in enumerate(preset.links, start=1):
        src_node, dst_node = ui_nodes[src], ui_nodes[dst]
        slot = next(i for i, o in enumerate(src_node["outputs"]) if o["name"] == out_name)
        kind = src_node["outputs"][slot]["type"]
        src_node["outputs"][slot]["links"].append(link_id)
        dst_node["inputs"].append({"name": in_name, "type": kind, "link": link_id})
        ui_links.append([link_id, src, slot, dst, len(dst_node["inputs"]) - 1, kind])
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"qwenfit/{preset.name}")),
        "revision": 0,
        "last_node_id": max(ui_nodes),
        "last_link_id": len(ui_links),
        "nodes": list(ui_nodes.values()),
        "links": ui_links,
        "groups": [],
        "config": {},
        "extra": {"ds": dict(VIEW, offset=list(VIEW["offset"])), "qwenfit_title": preset.title},
        "models": [model_entry(name) for name in PRESET_FILES["layered" if "layered" in preset.name else "edit"]],
        "version": 0.4,
    }


def write_all(object_info: dict[str, Any]) -> list[Path]:
    """Write every preset's UI workflow and API twin; returns the paths written."""
    API_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    write_masked_sample(UI_DIR / "inputs" / MASKED_SAMPLE_IMAGE)
    written.append(UI_DIR / "inputs" / MASKED_SAMPLE_IMAGE)
    for preset in PRESETS:
        ui = to_ui(preset, object_info)
        api = ui_to_api(ui, object_info)
        for path, data in ((UI_DIR / f"{preset.name}.json", ui), (API_DIR / f"{preset.name}.api.json", api)):
            path.write_text(json.dumps(data, indent=2) + "\n")
            written.append(path)
        write_thumbnail(preset, UI_DIR / f"{preset.name}.jpg")
        written.append(UI_DIR / f"{preset.name}.jpg")
    return written


def main() -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from comfy_host import ComfyHost

    with ComfyHost(Path(tempfile.mkdtemp(prefix="qwenfit-presets-"))) as host:
        object_info = host.object_info()
    for path in write_all(object_info):
        print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# The tiny stand-ins for the real files' names (the transformers first), and a step count that keeps CPU runs
# short (the tiny models draw noise whatever the step count). The text encoder is the one `auto` picks among
# the tiny files.
TINY_STAND_INS = {
    EDIT_MODEL: "qwenfit_tiny_edit_2509_fp8_e4m3fn.safetensors",
    LAYERED_MODEL: "qwenfit_tiny_layered_fp8mixed.safetensors",
    TEXT_ENCODER: "qwenfit_tiny_qwen_2.5_vl.safetensors",
    EDIT_VAE: "qwenfit_tiny_qwen_image_vae.safetensors",
    LAYERED_VAE: "qwenfit_tiny_qwen_image_layered_vae.safetensors",
}
TINY_STEPS = 3


def on_tiny_models(api: dict[str, Any], steps: int = TINY_STEPS) -> dict[str, Any]:
    """A copy of an API workflow that runs on the tiny models with few steps."""
    api = json.loads(json.dumps(api))
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "QwenFitOptimizedLoader":
            for name in FILE_INPUTS:
                if inputs.get(name) in TINY_STAND_INS:
                    inputs[name] = TINY_STAND_INS[inputs[name]]
        if "steps" in inputs and node["class_type"].startswith("QwenFit"):
            inputs["steps"] = min(inputs["steps"], steps)
    return api
