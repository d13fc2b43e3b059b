"""Second copies of modules without second copies of their weights: a GPU that runs the same blocks at the same
time as another (sequence parallelism, one queuing thread per GPU) needs modules of its own to bind its own
weights to, while every other attribute (the class a LoRA gives a layer, its factors, the fast flags) stays the
originals'."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ..files.tensor_layout import ModuleLayout

# What a shell keeps for itself; everything else in a module's __dict__ is shared with the original.
_OWN = ("_parameters", "_buffers", "_modules")


def shell_of(module: nn.Module) -> tuple[nn.Module, dict[nn.Module, nn.Module]]:
    """A copy of ``module``'s tree whose parameters and buffers are new objects aliasing the originals' current
    tensors (no copy), to be bound elsewhere; and the map original -> shell of every module in it."""
    owners: dict[nn.Module, nn.Module] = {}

    def copy(original: nn.Module) -> nn.Module:
        shell = object.__new__(type(original))
        shell.__dict__.update({k: v for k, v in original.__dict__.items() if k not in _OWN})
        shell.__dict__["_parameters"] = {
            name: None if p is None else nn.Parameter(p.data, requires_grad=False)
            for name, p in original._parameters.items()
        }
        shell.__dict__["_buffers"] = dict(original._buffers)
        shell.__dict__["_modules"] = {name: None if c is None else copy(c) for name, c in original._modules.items()}
        owners[original] = shell
        return shell

    return copy(module), owners


def follow_owners(layout: ModuleLayout, owners: dict[nn.Module, nn.Module]) -> ModuleLayout:
    """``layout`` with every tensor's owner replaced by its shell (same offsets: views bind alike)."""
    return ModuleLayout(tuple(replace(p, owner=owners[p.owner]) for p in layout.places), layout.nbytes)


def sync_shells(owners: dict[nn.Module, nn.Module]) -> None:
    """Bring every shell's class and shared attributes up to its original's (a LoRA attached or detached since,
    a speed rung's flags): cheap, once per run."""
    for original, shell in owners.items():
        if shell.__class__ is not original.__class__:
            shell.__class__ = original.__class__
        for key, value in original.__dict__.items():
            if key not in _OWN:
                shell.__dict__[key] = value
        for key in [k for k in shell.__dict__ if k not in original.__dict__]:
            del shell.__dict__[key]  # e.g. ``low_rank`` after the LoRA was detached
