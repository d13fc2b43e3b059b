"""What a workflow mixes, on each server (ComfyUI 0.3.75 and 0.8.0, whose core nodes moved to the V3 schema):
Load Image's mask into our masked edit, our IMAGE into ComfyUI's own image nodes and through ComfyUI's own VAE
Encode and Decode, in one prompt; and the progress bar of our run node.

The other things that differ between the servers run on both in their own modules: registration, templates
and thumbnails (test_registration), /free and ComfyUI's model unloading (test_comfy_memory_manager), Cancel in
every phase (test_cancel_server).
"""

from __future__ import annotations

import numpy as np
from graphs import EDIT, edit_graph, loader
from PIL import Image
from test_masked_edit_server import _edit, _outside, _rgba

# A Wan 2.1 VAE (the Qwen-Image VAE's layout, ComfyUI's own key names) small enough for the CPU: ComfyUI reads
# its width from the file but fixes its depth (levels 1, 2, 4, 4; two residual blocks; 16 latent channels),
# which the pack's tiny VAE (levels 1, 2, 2, 2; one block) does not have, so ComfyUI cannot load that one.
COMFY_TINY_VAE = "qwenfit_tiny_comfy_loadable_vae.safetensors"
PICTURE = (128, 96)
BOX = (40, 30, 80, 70)  # transparent: Load Image's MASK is 1 there, the part our node edits


def _comfy_loadable_tiny_vae(path) -> None:
    """Random weights in the Qwen-Image VAE's architecture at base width 8, in ComfyUI's key names."""
    import torch
    from diffusers import AutoencoderKLQwenImage
    from safetensors.torch import save_file

    from tools.comfy_layouts import _comfy_vae

    torch.manual_seed(0)
    config = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": []}
    vae = AutoencoderKLQwenImage(**config, temperal_downsample=[False, True, True], input_channels=3)
    tensors = {k: v.contiguous() for k, v in vae.state_dict().items()}
    save_file(_comfy_vae(tensors, num_res_blocks=2, levels=4), str(path))


def _saved(result, prefix: str) -> np.ndarray:
    path = next(f for f in result.files if f.name.startswith(f"{prefix}_"))
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_one_prompt_mixes_our_nodes_with_comfyuis_own(any_comfy):
    comfy = any_comfy
    vae_file = comfy.base / "models" / "vae" / COMFY_TINY_VAE
    if not vae_file.exists():
        _comfy_loadable_tiny_vae(vae_file)
    picture = _rgba("mixed_mask.png", comfy, PICTURE, [BOX])
    save = {"class_type": "SaveImage"}
    graph = {
        "1": loader(EDIT),
        "2": {"class_type": "LoadImage", "inputs": {"image": picture}},
        "3": _edit(["2", 0], ["2", 1], "mixed"),  # Load Image's MASK into our masked edit
        # Our IMAGE into ComfyUI's own nodes.
        "10": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "11": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["3", 0],
                "upscale_method": "nearest-exact",
                "width": 64,
                "height": 48,
                "crop": "disabled",
            },
        },
        "12": {"class_type": "ImageBlur", "inputs": {"image": ["3", 0], "blur_radius": 2, "sigma": 1.0}},
        # ComfyUI's own VAE Encode and Decode on our output.
        "20": {"class_type": "VAELoader", "inputs": {"vae_name": COMFY_TINY_VAE}},
        "21": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["20", 0]}},
        "22": {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["20", 0]}},
    }
    for node, name in (("3", "ours"), ("10", "inverted"), ("11", "scaled"), ("12", "blurred"), ("22", "vae")):
        graph[f"3{node}"] = {**save, "inputs": {"images": [node, 0], "filename_prefix": f"mixed/{name}"}}
    result = comfy.run(graph)
    assert result.status == "success", result.error_text()

    ours = _saved(result, "ours")
    given = np.asarray(Image.open(comfy.input_dir / picture).convert("RGB")).astype(np.int16)
    assert ours.shape == given.shape  # the masked edit keeps the input's size
    keep = _outside(ours.shape[:2], [BOX])
    assert np.array_equal(ours[keep], given[keep])  # Load Image's mask reached our node: only the box changed
    assert not np.array_equal(ours, given)

    assert np.abs(_saved(result, "inverted") - (255 - ours)).max() <= 1
    assert _saved(result, "scaled").shape == (48, 64, 3)
    blurred = _saved(result, "blurred")
    assert blurred.shape == ours.shape and not np.array_equal(blurred, ours)
    assert "Missing VAE keys" not in comfy.log()  # ComfyUI filled its own VAE from every key of the file
    round_trip = _saved(result, "vae")  # random weights: an image of the right size, not a faithful one
    assert round_trip.shape == ours.shape and round_trip.std() > 0


def test_progress_bar_counts_our_steps_to_the_end(any_comfy):
    result = any_comfy.run(edit_graph(seed=41, width=64, height=64, steps=4))
    assert result.status == "success", result.error_text()
    progress = result.progress_events("3")
    assert [(p["value"], p["max"]) for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # Both servers also send the combined per-node state the newer frontends draw (progress_state): our node's
    # last one is at its last step or finished.
    states = [
        e["data"]["nodes"]["3"] for e in result.events if e["type"] == "progress_state" and "3" in e["data"]["nodes"]
    ]
    assert states, [e["type"] for e in result.events]
    assert states[-1]["max"] == 4 and (states[-1]["value"] == 4 or states[-1]["state"] == "finished"), states[-1]
