"""Run in a subprocess with ComfyUI importable: compare our key maps and shipped configs with
ComfyUI's own modules, at real size (on the meta device) and at the tiny size of our files.

Prints one JSON object: per check, the keys that differ (empty lists mean agreement).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(comfy_dir: str, repo: str, models: str) -> dict:
    sys.argv = ["main.py", "--cpu"]
    sys.path[:0] = [comfy_dir, repo]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.ops
    import torch
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel as ComfyQwen
    from comfy.ldm.wan.vae import WanVAE
    from comfy.text_encoders.llama import Qwen25_7BVLI

    from optim.files.key_maps import text_encoder_to_comfy, vae_to_diffusers
    from optim.files.safetensors_file import SafetensorsFile
    from optim.qwen.architectures import Architecture, empty_text_encoder, empty_transformer, empty_vae
    from optim.qwen.variants import Variant

    ops = comfy.ops.disable_weight_init
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    real = Architecture("qwen-image")
    out: dict[str, list] = {}

    def compare(name: str, ours: dict, theirs: dict) -> None:
        out[name] = sorted(set(ours) ^ set(theirs)) + sorted(k for k in ours if k in theirs and ours[k] != theirs[k])

    with torch.device("meta"):
        comfy_transformer = shapes(ComfyQwen(operations=ops, dtype=torch.bfloat16, image_model="qwen_image"))
        comfy_te = shapes(Qwen25_7BVLI({}, dtype=torch.bfloat16, device="meta", operations=ops))
        vae_cfg = real.config("vae")
        comfy_vae = shapes(
            WanVAE(
                dim=vae_cfg["base_dim"],
                z_dim=16,
                dim_mult=vae_cfg["dim_mult"],
                num_res_blocks=vae_cfg["num_res_blocks"],
                attn_scales=[],
                temperal_downsample=vae_cfg["temperal_downsample"],
                dropout=0.0,
            )
        )
    compare("real transformer", shapes(empty_transformer(real, Variant.EDIT_2509)), comfy_transformer)
    te = {text_encoder_to_comfy(k): v for k, v in shapes(empty_text_encoder(real)).items() if k != "lm_head.weight"}
    compare("real text encoder", te, comfy_te)
    levels, blocks = len(vae_cfg["dim_mult"]), vae_cfg["num_res_blocks"]
    ours_vae = shapes(empty_vae(real, 3))
    compare("real vae", ours_vae, {vae_to_diffusers(k, blocks, levels): v for k, v in comfy_vae.items()})

    # The tiny VAE files we write, against ComfyUI's WanVAE built at the tiny size. This ComfyUI
    # predates RGBA VAEs, so the Layered file is compared by names only.
    tiny = Architecture("qwenfit-tiny").config("vae")
    with torch.device("meta"):
        tiny_vae = shapes(
            WanVAE(
                dim=tiny["base_dim"],
                z_dim=16,
                dim_mult=tiny["dim_mult"],
                num_res_blocks=tiny["num_res_blocks"],
                attn_scales=[],
                temperal_downsample=tiny["temperal_downsample"],
                dropout=0.0,
            )
        )
    for name, by_shape in (("qwenfit_tiny_qwen_image_vae", True), ("qwenfit_tiny_qwen_image_layered_vae", False)):
        file = SafetensorsFile(Path(models) / "vae" / f"{name}.safetensors")
        ours = {k: file.shape(k) if by_shape else () for k in file.keys()}
        compare(f"tiny file {name}", ours, tiny_vae if by_shape else {k: () for k in tiny_vae})
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
