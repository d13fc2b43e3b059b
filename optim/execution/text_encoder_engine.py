"""Placing Qwen2.5-VL for prompt encoding: fully resident, or streamed unit by unit.

Streamed, its 32 vision blocks and 28 language layers run through a :class:`BlockStreamer` ring
(each is used once per prompt, so one pass over PCIe per encoding), the token embedding is looked
up on the host (a lookup needs no GPU) and ``lm_head`` is skipped: prompt encoding reads hidden
states, never logits. Layered's auto-caption generates token by token and must not stream weights
once per token, so the planner keeps the whole model resident for such runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..files.tensor_layout import bind, current_tensors, layout_of
from ..qwen.anatomy import text_host_modules, text_units
from .block_streamer import BlockStreamer

if TYPE_CHECKING:
    from ..files.file_tensors import FileFeed


def _rest(text_encoder: nn.Module) -> list[nn.Module]:
    """Modules outside the units and the host parts (patch embed, merger, norms, rotary tables)."""
    skip = {id(m) for m in [*text_units(text_encoder), *text_host_modules(text_encoder)]}
    found = []

    def walk(module: nn.Module) -> None:
        for child in module.children():
            if id(child) in skip:
                continue
            if any(True for _ in child.children()) and not child._parameters and not child._buffers:
                walk(child)
            else:
                found.append(child)

    walk(text_encoder)
    return found


class TextEncoderEngine:
    """Keeps the text encoder resident or streams it; switch with :meth:`configure`."""

    def __init__(
        self,
        text_encoder: nn.Module,
        device: torch.device,
        pin: bool,
        feed: FileFeed | None = None,
        in_files: bool = False,
    ) -> None:
        """``feed``/``in_files``: the weights the loader left in the files (see :class:`BlockStreamer`);
        with ``in_files`` the units are read from the files at each encoding."""
        self.model = text_encoder
        self.device = device
        self.units = text_units(text_encoder)
        self.streamer = BlockStreamer(self.units, device, pin=pin, feed=feed, in_files=in_files)
        self._host_parts = text_host_modules(text_encoder)
        self._host_layouts = [layout_of(m) for m in self._host_parts]
        self._host_home = [current_tensors(lay) for lay in self._host_layouts]
        self._rest = _rest(text_encoder)
        for module in self._rest:
            module.to(device)
        self._hooks: list = []
        self.mode = ""
        # Nothing reaches the GPU before a plan asks for it (a small card could not hold the 7B model).
        self.configure("streamed")

    @property
    def reads_files(self) -> bool:
        return self.streamer.reads_files

    def configure(self, mode: str) -> None:
        """``resident``: everything on the GPU; ``streamed``: units stream, host parts stay on the host."""
        if mode == self.mode:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if mode == "resident":
            self.streamer.configure(range(len(self.units)))
            for lay, home in zip(self._host_layouts, self._host_home, strict=True):
                bind(lay, [t.to(self.device) for t in home])
            for i, unit in enumerate(self.units):  # a unit's GPU copy may still be landing after the load
                self._hooks.append(unit.register_forward_pre_hook(lambda _m, _a, i=i: self.streamer.enter(i)))
        else:
            self.streamer.configure((), slots=2)
            for lay, home in zip(self._host_layouts, self._host_home, strict=True):
                bind(lay, home)
            for i, unit in enumerate(self.units):
                self._hooks.append(unit.register_forward_pre_hook(lambda _m, _a, i=i: self.streamer.enter(i)))
                self._hooks.append(unit.register_forward_hook(lambda _m, _a, _o, i=i: self.streamer.leave(i)))
            embed = self._host_parts[0]
            self._hooks.append(embed.register_forward_pre_hook(lambda _m, args: tuple(a.cpu() for a in args)))
            self._hooks.append(embed.register_forward_hook(lambda _m, _a, out: out.to(self.device)))
        self.mode = mode

    @contextmanager
    def encoding(self) -> Iterator[None]:
        """Around one prompt encoding: the ring lives only this long; logits are not computed."""
        lm_head = self.model.lm_head
        if self.mode == "streamed":
            self.model.lm_head = nn.Identity()  # hidden states are all diffusers reads
            self.streamer.start()
        try:
            yield
        finally:
            self.model.lm_head = lm_head
            self.streamer.stop()
            if self.mode == "streamed" and self.device.type == "cuda":
                # Hand the ring back now: the VAE encodes the references next and needs the room.
                torch.cuda.empty_cache()

    @property
    def gpu_parts(self) -> list[nn.Module]:
        """The small modules that live on the GPU while the engine owns the text encoder."""
        return list(self._rest)

    def park(self) -> None:
        """Nothing on the GPU: the units stream at the next encoding and the small parts wait on the host
        (ComfyUI asked for the memory back); :meth:`unpark` before the next plan places it again."""
        self.configure("streamed")
        for module in self._rest:
            module.to("cpu")

    def unpark(self) -> None:
        for module in self._rest:
            module.to(self.device)

    def release(self) -> None:
        """Everything back in host memory; page-locked memory unlocked."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for lay, home in zip(self._host_layouts, self._host_home, strict=True):
            bind(lay, home)
        self.streamer.release()
        for module in self._rest:
            module.to("cpu")
        self._host_home = []
        self.mode = "released"
