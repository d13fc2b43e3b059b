"""Build a module with its weights on the meta device, on any thread, while other threads build real ones.

accelerate's ``init_empty_weights`` swaps ``nn.Module.register_parameter`` for the whole process: a plan
preview answered on a route thread while the loader filled a model on ComfyUI's worker thread moved the
loader's freshly read weights to the meta device ("Cannot copy out of meta tensor"), and one context
exiting inside another could leave the swap in place for good. ``torch.device("meta")`` is a
torch-function mode, and that stack is per thread, so here only the calling thread builds on meta.

Under it, everything a constructor computes lands on meta too, including state no file holds: the rotary
tables (diffusers' ``pos_freqs``, transformers' ``inv_freq``). Those live in parameterless modules whose
constructor arguments are kept as attributes of the same name; such a module is built again on the CPU
and its computed tensors copied over. A module with computed state that cannot be rebuilt that way is an
internal error, raised here rather than as NaNs or a meta tensor at run time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from ..errors import InternalError

M = TypeVar("M", bound=nn.Module)
META = torch.device("meta")


def build_empty(factory: Callable[[], M]) -> M:
    """``factory()`` built on the meta device on this thread only, its computed tables real (CPU), in eval mode.

    Parameters and persistent buffers (what the files hold) stay on meta, ready to be filled; other threads
    creating tensors or modules meanwhile are unaffected.
    """
    with META:
        module = factory()
    for name, owner in module.named_modules():
        computed = _computed_meta_tensors(owner)
        if computed:
            _rebuild_computed_state(name or type(module).__name__, owner, computed)
    return module.eval()


def _computed_meta_tensors(owner: nn.Module) -> list[str]:
    """Names of ``owner``'s own meta tensors that no file fills: non-persistent buffers and plain attributes."""
    names = [
        k for k, b in owner._buffers.items() if b is not None and b.is_meta and k in owner._non_persistent_buffers_set
    ]
    names += [k for k, v in vars(owner).items() if isinstance(v, torch.Tensor) and v.is_meta]
    return names


def _rebuild_computed_state(where: str, owner: nn.Module, names: list[str]) -> None:
    if any(True for _ in owner.parameters()) or any(k not in owner._non_persistent_buffers_set for k in owner._buffers):
        raise InternalError(
            f"{where} ({type(owner).__name__}) computes tensors in its constructor next to weights, so it cannot "
            "be built empty on this diffusers/transformers version."
        )
    fresh = type(owner)(**_constructor_arguments(where, owner))
    for key in names:
        value = fresh._buffers[key] if key in owner._buffers else getattr(fresh, key)
        if key in owner._buffers:
            owner._buffers[key] = value
        else:
            setattr(owner, key, value)


def _constructor_arguments(where: str, owner: nn.Module) -> dict[str, object]:
    arguments = {}
    for name, parameter in list(inspect.signature(type(owner).__init__).parameters.items())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if hasattr(owner, name):
            arguments[name] = getattr(owner, name)
        elif parameter.default is parameter.empty:
            raise InternalError(
                f"{where} ({type(owner).__name__}) keeps no '{name}' to be built again, so its computed tables "
                "cannot be made outside the meta device on this diffusers/transformers version."
            )
    return arguments
