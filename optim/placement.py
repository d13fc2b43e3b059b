"""Decide and apply where each pipeline component lives (a first, simple planner).

Today this maps the offload choice onto diffusers' own levers (whole-model offload and
block-level group offload with streams). The budget-driven planner and the pack's own
block streaming replace the internals later; the Plan it returns keeps its shape.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from .devices import dtype_name
from .fp8_linear import Fp8Linear
from .plan import ComponentPlacement, Plan
from .settings import OffloadSettings, VaeSettings

_COMPONENTS = ("text_encoder", "transformer", "vae")
# Room kept free beside the weights for activations and the CUDA context when "auto" decides.
_ACTIVATION_HEADROOM = 4 * 1024**3


def _size(module: torch.nn.Module) -> tuple[int, int, str]:
    """(parameter count, bytes, dtype label) counting fp8-stored Linear weights, which are buffers."""
    params = list(module.parameters())
    count = sum(p.numel() for p in params)
    nbytes = sum(p.numel() * p.element_size() for p in params)
    label = dtype_name(params[0].dtype) if params else "fp32"
    fp8 = [m.weight_fp8 for m in module.modules() if isinstance(m, Fp8Linear)]
    if fp8:
        count += sum(w.numel() for w in fp8)
        nbytes += sum(w.numel() * w.element_size() for w in fp8)
        label = f"fp8+{label}"
    return count, nbytes, label


def _free_device_bytes(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return free


def choose_offload_mode(total_bytes: int, device: torch.device, requested: str) -> str:
    """Resolve "auto": keep everything resident when it fits with headroom, else stream blocks."""
    if device.type != "cuda":
        return "none"
    if requested != "auto":
        return requested
    return "none" if total_bytes + _ACTIVATION_HEADROOM <= _free_device_bytes(device) else "blocks"


def plan_placement(pipeline: Any, device: torch.device, offload: OffloadSettings) -> Plan:
    """Build the plan for a loaded pipeline: per component, dtype, home and residency."""
    sizes = {name: _size(getattr(pipeline, name)) for name in _COMPONENTS}
    total = sum(nbytes for _, nbytes, _ in sizes.values())
    mode = choose_offload_mode(total, device, offload.mode)
    dev = str(device)
    notes = []
    if device.type != "cuda":
        notes.append("no GPU: everything runs on the CPU; offload settings do not apply")
    components = []
    for name in _COMPONENTS:
        count, nbytes, dtype = sizes[name]
        if mode == "none" or name == "vae":
            home, residency = dev, "resident"
        elif mode == "model":
            home, residency = "cpu", "offloaded (whole)"
        else:
            home, residency = "cpu", "streamed (blocks)"
        components.append(ComponentPlacement(name, count, dtype, nbytes, home, dev, residency))
    plan = Plan(device=dev, components=tuple(components), vae_tiling=False, vae_slicing=False, notes=tuple(notes))
    return plan_vae(plan, VaeSettings(), is_layered=type(pipeline).__name__ == "QwenImageLayeredPipeline")


def plan_vae(plan: Plan, vae: VaeSettings, is_layered: bool) -> Plan:
    """The plan with VAE tiling and slicing decided: tiling when weights are offloaded (a small
    card), slicing for Layered (it decodes every layer in one batch); explicit choices win."""
    offloaded = any(c.residency != "resident" for c in plan.components)
    tiling = vae.tiling == "on" or (vae.tiling == "auto" and offloaded)
    slicing = vae.slicing == "on" or (vae.slicing == "auto" and is_layered)
    return replace(plan, vae_tiling=tiling, vae_slicing=slicing)


def apply_placement(pipeline: Any, plan: Plan, device: torch.device) -> None:
    """Move or hook the components as the plan says (done once, at load time)."""
    if device.type != "cuda":
        pipeline.to(device)
        return
    residencies = {c.name: c.residency for c in plan.components}
    if all(r == "resident" for r in residencies.values()):
        pipeline.to(device)
    elif residencies["transformer"] == "offloaded (whole)":
        pipeline.enable_model_cpu_offload(device=device)
    else:
        from diffusers.hooks import apply_group_offloading

        # diffusers' hook works on any module (the transformers text encoder has no enable_group_offload).
        for name in ("transformer", "text_encoder"):
            apply_group_offloading(
                getattr(pipeline, name),
                onload_device=device,
                offload_device=torch.device("cpu"),
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=True,
            )
        pipeline.vae.to(device)


def apply_vae_settings(pipeline: Any, plan: Plan) -> None:
    """Set VAE tiling/slicing for one run, explicitly on or off, so runs never inherit each other's."""
    vae = pipeline.vae
    (vae.enable_tiling if plan.vae_tiling else vae.disable_tiling)()
    (vae.enable_slicing if plan.vae_slicing else vae.disable_slicing)()
