"""Offload mode "model": diffusers' own whole-component offload, for users who ask for it.

The pack's engine is not involved; the plan only fixes the VAE switches of each run.
"""

from __future__ import annotations

from typing import Any

import torch

from ..planning.plan import Plan


def place_whole_model(pipeline: Any, device: torch.device) -> None:
    """diffusers' whole-component offload on a GPU, or everything on a CPU device."""
    if device.type != "cuda":
        pipeline.to(device)
        return
    pipeline.enable_model_cpu_offload(device=device)


def apply_vae_switches(pipeline: Any, plan: Plan) -> None:
    """Set VAE tiling/slicing for one run, explicitly on or off, so runs never inherit each other's."""
    vae = pipeline.vae
    (vae.enable_tiling if plan.vae_tiling else vae.disable_tiling)()
    (vae.enable_slicing if plan.vae_slicing else vae.disable_slicing)()
