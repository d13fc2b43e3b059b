"""Precomputed timestep modulation: every block's ``img_mod`` / ``txt_mod`` output, once per generation.

Those two layers are a third of the transformer's weights, and their input is only the timestep
embedding. For a known schedule their outputs are constants, so the weights stay in host memory and
never occupy VRAM or cross PCIe during denoising. Each row is computed with the same shapes the
diffusers forward uses, so the values are the ones it would compute (bit-identical on one device).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..quant.low_rank import low_rank_on
from ..qwen.anatomy import MODULATION_LAYERS
from .block_streamer import BlockStreamer

if TYPE_CHECKING:
    from ..files.file_tensors import FileFeed


def single_sample_temb(
    transformer: nn.Module, timestep: torch.Tensor, dtype: torch.dtype, additional_t_cond: torch.Tensor | None
) -> torch.Tensor:
    """The timestep embedding diffusers' forward builds for one sample (two rows, t and 0, for 2511)."""
    t = timestep.to(dtype)
    if transformer.config.zero_cond_t:
        t = torch.cat([t, t * 0], dim=0)
    probe = torch.empty(0, dtype=dtype, device=t.device)  # time_text_embed reads only its dtype
    return transformer.time_text_embed(t, probe, additional_t_cond)


def expand_for_batch(
    img: torch.Tensor, txt: torch.Tensor, batch: int, zero_cond_t: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample's modulation rows made ready for ``batch`` image samples (the text stream is packed,
    so its row serves every sample). 2511's rows are (t, 0): the forward wants all t rows, then all 0 rows."""
    if batch == 1:
        return img, txt
    if zero_cond_t:
        return torch.cat([img[:1].expand(batch, -1), img[1:].expand(batch, -1)]), txt
    return img.expand(batch, -1), txt


class ModulationTable:
    """Modulation weights kept off the GPU (in host memory, or in the model files) and the
    per-timestep outputs computed from them, streamed block by block like the blocks themselves."""

    def __init__(
        self,
        transformer: nn.Module,
        device: torch.device,
        pin: bool,
        feed: FileFeed | None = None,
        in_files: bool = False,
    ) -> None:
        """``feed``/``in_files``: the weights the loader left in the files (see :class:`BlockStreamer`)."""
        self.device = device
        self.transformer = transformer
        self.zero_cond_t = bool(transformer.config.zero_cond_t)
        blocks = transformer.transformer_blocks
        units = [nn.ModuleList([getattr(b, name) for name in MODULATION_LAYERS]) for b in blocks]
        self.streamer = BlockStreamer(units, device, pin=pin, feed=feed, in_files=in_files)
        self.streamer.configure((), slots=2)
        # key -> per block (img rows, txt row) on the device
        self._rows: dict[Hashable, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def rows_for(self, key: Hashable) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        return self._rows.get(key)

    def keep_only(self, keys: set[Hashable]) -> None:
        """Drop rows of timesteps the current schedule does not use (a new step count or size)."""
        for key in list(self._rows):
            if key not in keys:
                del self._rows[key]

    def compute(self, tembs: dict[Hashable, torch.Tensor]) -> None:
        """Compute rows for every ``key -> single-sample temb`` not already known, one block at a time."""
        todo = {k: t for k, t in tembs.items() if k not in self._rows}
        if not todo:
            return
        results: dict[Hashable, list[tuple[torch.Tensor, torch.Tensor]]] = {k: [] for k in todo}
        self.streamer.start()
        try:
            for i, block in enumerate(self.transformer.transformer_blocks):
                self.streamer.enter(i)
                # LoRA factors of these layers live on the host: one copy per block, not one per timestep.
                with low_rank_on([*block.img_mod.modules(), *block.txt_mod.modules()], self.device):
                    for key, temb in todo.items():
                        img = block.img_mod(temb)
                        txt = block.txt_mod(temb.chunk(2, dim=0)[0] if self.zero_cond_t else temb)
                        results[key].append((img, txt))
                self.streamer.leave(i)
        finally:
            self.streamer.stop()
        self._rows.update(results)

    def expand(self, rows: tuple[torch.Tensor, torch.Tensor], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(img, txt) modulation for ``batch`` image samples sharing one timestep and one packed text stream."""
        return expand_for_batch(rows[0], rows[1], batch, self.zero_cond_t)

    @property
    def host_bytes(self) -> int:
        """Bytes of modulation weights held in host memory (0 when they are read from the files)."""
        return self.streamer.host_bytes

    @property
    def reads_files(self) -> bool:
        return self.streamer.reads_files

    def release(self) -> None:
        self._rows.clear()
        self.streamer.release()
