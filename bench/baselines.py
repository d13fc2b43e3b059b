"""The stock diffusers baselines, as benchmark configurations.

A configuration is any object with:

- ``name`` (str, shown in the table) and optionally ``key`` (short name for ``--configs``);
- ``prepare(components, device) -> pipeline``: place the shared components (see ``bench.realsize``;
  the dict also carries ``variant`` and ``job``, the ``bench.jobs.Job`` about to run) and return a
  pipeline ready to run (``bench.realsize.make_pipeline``); raise ``Skip`` when the configuration
  cannot run here;
- ``release(pipeline)``: undo everything ``prepare`` did (hooks, casts, pinned copies) and leave the
  weights in pageable host memory, unchanged; ``pipeline`` is None when ``prepare`` raised. The
  runner then checks the weights with a fingerprint (and rebuilds them if they changed) and puts
  them back on the host itself whatever ``release`` did (``restore_components``);
- ``pinned_bytes() -> int | None``: host bytes the configuration pinned (None: nothing to say);
- optionally ``pinned_note`` (how ``pinned_bytes`` was obtained) and ``predicted_peak_bytes``
  (the configuration's own prediction of the peak reserved GPU memory, None for the baselines).

The components are shared by every configuration of a job, so ``prepare`` must not replace or
recast weights that ``release`` cannot restore.
"""

from __future__ import annotations

import gc
from typing import Any, Protocol, runtime_checkable

import torch

from optim.files.host_memory import trim_host_heap

from .realsize import MODULES, empty_pinned_cache, make_pageable_, make_pipeline, move_component

RESIDENT = "diffusers resident bf16"
GROUP_OFFLOAD = "diffusers group offload (block, stream)"
_GROUP_HOOK = "group_offloading"  # diffusers.hooks.group_offloading._GROUP_OFFLOADING in 0.42.1


class Skip(Exception):
    """Raised by ``prepare`` when a configuration cannot run on this machine; the message says why."""


@runtime_checkable
class Configuration(Protocol):
    name: str

    def prepare(self, components: dict[str, Any], device: torch.device) -> Any: ...

    def release(self, pipeline: Any) -> None: ...

    def pinned_bytes(self) -> int | None: ...


def remove_diffusers_hooks(module: torch.nn.Module) -> int:
    """Remove every diffusers hook (``HookRegistry``) from ``module`` and its children; returns how many.

    diffusers 0.42.1 has no public way to undo ``enable_group_offload``; its own re-apply path calls
    ``HookRegistry.remove_hook`` for the group-offloading, prefetch and execution-tracker hooks, which
    is what this does for every hook found, last registered first. A hook that refuses to go
    (``LayerwiseCastingHook`` raises ``NotImplementedError``) is detached by force: the class forward
    comes back, but the weights it cast stay cast (the runner's fingerprint sees that).
    """
    removed = 0
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if registry is None:
            continue
        for name in reversed(list(registry._hook_order)):
            try:
                registry.remove_hook(name, recurse=False)
            except NotImplementedError:
                sub.__dict__.pop("forward", None)  # drop the whole wrapper chain
                break
            removed += 1
        del sub._diffusers_hook
        # remove_hook leaves the original bound forward as an instance attribute; drop it.
        bound = sub.__dict__.get("forward")
        if bound is not None and getattr(bound, "__func__", None) is type(sub).forward:
            del sub.forward
    return removed


def free_device_memory() -> None:
    """Collect garbage (hooks hold reference cycles), empty the CUDA cache and the pinned host cache,
    trim the host heap."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    empty_pinned_cache()
    trim_host_heap()


def restore_components(components: dict[str, Any]) -> None:
    """Safety net after any configuration: no diffusers hooks, weights in pageable host memory."""
    for name in MODULES:
        module = components[name]
        remove_diffusers_hooks(module)
        move_component(module, "cpu")
        make_pageable_(module)
    free_device_memory()


class ResidentBaseline:
    """Every component moved to the device as it is (bf16 when built in bf16)."""

    name = RESIDENT
    key = "resident"
    predicted_peak_bytes: int | None = None
    pinned_note = "nothing pinned"

    def prepare(self, components: dict[str, Any], device: torch.device) -> Any:
        for name in MODULES:
            move_component(components[name], device)
        return make_pipeline(components, components["variant"])

    def release(self, pipeline: Any) -> None:
        if pipeline is None:
            return  # prepare failed before it made a pipeline: the runner's restore_components moves the rest
        for name in MODULES:
            move_component(getattr(pipeline, name), "cpu")
        free_device_memory()

    def pinned_bytes(self) -> int | None:
        return 0


class GroupOffloadBaseline:
    """diffusers' best stock lever (field notes, section 3): block-level group offload with a CUDA stream
    for the transformer and the text encoder, the VAE resident.

    The text encoder gets ``apply_group_offloading`` with the same arguments, as
    ``pipeline.enable_group_offload`` would do. Its top-level children (``model``, ``lm_head``) are not
    block lists, so diffusers makes the whole text encoder one unstreamed group, moved from pageable
    memory at each call.
    """

    name = GROUP_OFFLOAD
    key = "group-offload"
    predicted_peak_bytes: int | None = None
    pinned_note = "counted: diffusers' pinned copies (tensor bytes; the allocator rounds blocks up)"

    def __init__(self) -> None:
        self._modules: list[torch.nn.Module] = []

    def _arguments(self, device: torch.device) -> dict[str, Any]:
        return dict(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
        )

    def prepare(self, components: dict[str, Any], device: torch.device) -> Any:
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            raise Skip("group offload with use_stream=True needs a CUDA device")
        from diffusers.hooks import apply_group_offloading

        pipeline = make_pipeline(components, components["variant"])
        self._modules = [pipeline.transformer, pipeline.text_encoder]  # known before a failure, for release
        pipeline.transformer.enable_group_offload(**self._arguments(device))
        apply_group_offloading(pipeline.text_encoder, **self._arguments(device))
        move_component(pipeline.vae, device)
        return pipeline

    def release(self, pipeline: Any) -> None:
        modules = [getattr(pipeline, name) for name in MODULES] if pipeline is not None else self._modules
        copies = self._pinned_copies()
        for module in modules:
            remove_diffusers_hooks(module)
        for table in copies:
            table.clear()  # the hooks live on in reference cycles until gc: drop their pinned copies now
        for module in modules:
            move_component(module, "cpu")  # a group still on the GPU after an error comes back too
            make_pageable_(module)  # the weights now live in the pinned copies: make them pageable again
        self._modules = []
        free_device_memory()

    def _pinned_copies(self) -> list[dict]:
        """The host-copy tables (``ModuleGroup.cpu_param_dict``) of the group-offload hooks."""
        tables = []
        for module in self._modules:
            for sub in module.modules():
                registry = getattr(sub, "_diffusers_hook", None)
                hook = registry.get_hook(_GROUP_HOOK) if registry is not None else None
                table = getattr(getattr(hook, "group", None), "cpu_param_dict", None)
                if table:
                    tables.append(table)
        return tables

    def pinned_bytes(self) -> int | None:
        """Bytes of the pinned host copies the group-offload hooks hold (each tensor counted once)."""
        seen: dict[int, int] = {}
        for table in self._pinned_copies():
            for tensor in table.values():
                if tensor.is_pinned():
                    seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
        return sum(seen.values())


def baseline_configurations() -> list[Any]:
    """The stock diffusers configurations, the resident reference first."""
    return [ResidentBaseline(), GroupOffloadBaseline()]
