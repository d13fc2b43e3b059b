"""The load-time overview of the components, and diffusers' whole-model offload.

Offload modes auto, none and blocks hand the weights to the pack's engine (optim/engine.py),
which plans every run for its budget and job; this module only describes the components for
them. Mode "model" keeps diffusers' own whole-component offload, placed here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from .devices import dtype_name
from .plan import ComponentPlacement, Plan
from .settings import OffloadSettings, VaeSettings
from .streaming.tensor_layout import layout_of

_COMPONENTS = ("text_encoder", "transformer", "vae")


# Linear layers whose weights are compressed buffers, and how the overview names them.
_COMPRESSED = {"Fp8Linear": "fp8", "Fp8MatmulLinear": "fp8 matmul", "Int8Linear": "int8", "Nf4Linear": "nf4"}


def _size(module: torch.nn.Module) -> tuple[int, int, str]:
    """(parameter count, bytes, dtype label), compressed Linear weights (buffers) included."""
    params = list(module.parameters())
    compressed = [m for m in module.modules() if type(m).__name__ in _COMPRESSED]
    count = sum(p.numel() for p in params) + sum(m.in_features * m.out_features for m in compressed)
    label = dtype_name(params[0].dtype) if params else "fp32"
    formats = sorted({_COMPRESSED[type(m).__name__] for m in compressed})
    return count, layout_of(module).nbytes, "+".join([*formats, label])


def plan_placement(pipeline: Any, device: torch.device, offload: OffloadSettings) -> Plan:
    """Build the plan for a loaded pipeline: per component, dtype, home and residency."""
    sizes = {name: _size(getattr(pipeline, name)) for name in _COMPONENTS}
    dev = str(device)
    notes = []
    if device.type != "cuda":
        notes.append("no GPU: everything runs on the CPU; the VRAM budget does not apply")
    components = []
    for name in _COMPONENTS:
        count, nbytes, dtype = sizes[name]
        if device.type != "cuda" or name == "vae":
            home, residency = dev, "resident"
        elif offload.mode == "model":
            home, residency = "cpu", "offloaded (whole)"
        else:
            home, residency = "pinned cpu", "planned per run (resident or streamed)"
        components.append(ComponentPlacement(name, count, dtype, nbytes, home, dev, residency))
    plan = Plan(device=dev, components=tuple(components), vae_tiling=False, vae_slicing=False, notes=tuple(notes))
    return plan_vae(plan, VaeSettings(), is_layered=type(pipeline).__name__ == "QwenImageLayeredPipeline")


def plan_vae(plan: Plan, vae: VaeSettings, is_layered: bool) -> Plan:
    """The plan with VAE tiling and slicing decided: tiling when weights are offloaded (a small
    card), slicing for Layered (it decodes every layer in one batch); explicit choices win."""
    offloaded = any(c.residency == "offloaded (whole)" for c in plan.components)
    tiling = vae.tiling == "on" or (vae.tiling == "auto" and offloaded)
    slicing = vae.slicing == "on" or (vae.slicing == "auto" and is_layered)
    return replace(plan, vae_tiling=tiling, vae_slicing=slicing)


def apply_placement(pipeline: Any, plan: Plan, device: torch.device) -> None:
    """Place the components for offload mode "model" (diffusers' whole-component offload), or move
    everything to a CPU device."""
    if device.type != "cuda":
        pipeline.to(device)
        return
    pipeline.enable_model_cpu_offload(device=device)


def apply_vae_settings(pipeline: Any, plan: Plan) -> None:
    """Set VAE tiling/slicing for one run, explicitly on or off, so runs never inherit each other's."""
    vae = pipeline.vae
    (vae.enable_tiling if plan.vae_tiling else vae.disable_tiling)()
    (vae.enable_slicing if plan.vae_slicing else vae.disable_slicing)()
