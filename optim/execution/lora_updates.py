"""The LoRA stack a transformer applies now: each changed layer's stacked factors on each device.

``use`` is called before every run and is cheap when nothing changed. A new strength rewrites one
small scale vector per device (milliseconds); adding or removing a LoRA rebuilds the stacked factors
from the files' factors kept in host memory (optim/files/lora_factors.py). The base weights are never
touched, so nothing is ever loaded again for a LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..files.lora import NO_LORAS, LoraStack
from ..files.lora_factors import LayerShapes, LoraFile, file_stamp, match_layers, read_factors
from ..quant.low_rank import LowRankFactors, attach_low_rank, detach_low_rank, is_lora_target
from ..qwen.anatomy import is_modulation_layer


def lora_layer_shapes(transformer: nn.Module) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of every layer of ``transformer`` a LoRA may change, by name."""
    return {name: (m.out_features, m.in_features) for name, m in transformer.named_modules() if is_lora_target(m)}


def check_stack(stack: LoraStack, shapes: LayerShapes) -> list[LoraFile]:
    """Every LoRA of ``stack`` matched to the model's layers (QwenFitError naming the file and fix when not)."""
    return [match_layers(choice.path, shapes) for choice in stack.choices]


class LoraUpdates:
    """Which LoRA stack ``transformer``'s layers add to their outputs, and its factors per device."""

    def __init__(self, transformer: nn.Module) -> None:
        self.transformer = transformer
        self.shapes = lora_layer_shapes(transformer)
        self.stack = NO_LORAS
        self.nbytes = 0  # bytes of factors on each device
        self._structure: tuple | None = None  # files, devices, dtype: what the stacked factors were built for
        self._layers: list[nn.Module] = []
        self._row_lora = torch.empty(0, dtype=torch.long)  # per stacked row: which LoRA of the stack
        self._row_scale = torch.empty(0)  # per stacked row: alpha / rank of its pair
        self._scales: list[torch.Tensor] = []  # per device: every layer's scale rows, one flat float32 tensor

    def use(self, stack: LoraStack, devices: Sequence[torch.device], dtype: torch.dtype) -> bool:
        """Make the layers apply ``stack`` with factors on ``devices`` (the first is where the layers outside
        the blocks compute) in ``dtype``. Returns whether anything changed (cached results are then stale)."""
        devices = tuple(devices)
        structure = (tuple(file_stamp(c.path) for c in stack.choices), devices, dtype) if stack else None
        if structure == self._structure:
            if stack == self.stack:
                return False
            self._rescale(stack)
            self.stack = stack
            return True
        self.clear()
        if stack:
            self._build(stack, check_stack(stack, self.shapes), devices, dtype)
            self._structure = structure
        self.stack = stack
        return True

    def clear(self) -> None:
        """Every layer back to its own output; the stacked factors are freed."""
        for layer in self._layers:
            detach_low_rank(layer)
        self._layers, self._scales, self._structure, self.nbytes = [], [], None, 0
        self.stack = NO_LORAS

    def _strengths(self, stack: LoraStack) -> torch.Tensor:
        return torch.tensor([c.strength for c in stack.choices], dtype=torch.float32)

    def _rescale(self, stack: LoraStack) -> None:
        rows = self._row_scale * self._strengths(stack)[self._row_lora]
        for flat in self._scales:
            flat.copy_(rows, non_blocking=False)

    def _build(self, stack: LoraStack, files: list[LoraFile], devices: tuple[torch.device, ...], dtype) -> None:
        factors = [read_factors(f) for f in files]
        names = [name for name in self.shapes if any(name in f.layers for f in files)]
        plan: list[tuple[nn.Module, list[torch.Tensor], list[torch.Tensor], int]] = []
        row_lora, row_scale, total = [], [], 0
        for name in names:
            downs, ups = [], []
            for index, (lora, pairs) in enumerate(zip(files, factors, strict=True)):
                if name not in lora.layers:
                    continue
                pair = lora.layers[name]
                downs.append(pairs[name][0])
                ups.append(pairs[name][1])
                row_lora += [index] * pair.rank
                row_scale += [pair.scale] * pair.rank
            plan.append((self.transformer.get_submodule(name), downs, ups, total))
            total += sum(d.shape[0] for d in downs)
        self._row_lora = torch.tensor(row_lora, dtype=torch.long)
        self._row_scale = torch.tensor(row_scale, dtype=torch.float32)
        flat = self._row_scale * self._strengths(stack)[self._row_lora]
        host = torch.device("cpu")
        scale_devices = devices if host in devices else (*devices, host)
        self._scales = [flat.to(d) for d in scale_devices]
        on_host = self._scales[scale_devices.index(host)]
        self.nbytes = total * 4
        for (layer, downs, ups, start), name in zip(plan, names, strict=True):
            down = torch.cat(downs).to(dtype)
            up = torch.cat(ups, dim=1).to(dtype)
            rows = slice(start, start + down.shape[0])
            if is_modulation_layer(name):
                # Run once per schedule into the modulation table: kept on the host, copied in for the call.
                per_device = (LowRankFactors(down, up, on_host[rows]),)
            else:
                per_device = tuple(
                    LowRankFactors(down.to(d), up.to(d), scales[rows])
                    for d, scales in zip(devices, self._scales, strict=False)
                )
                self.nbytes += down.nbytes + up.nbytes
            attach_low_rank(layer, per_device)
            self._layers.append(layer)
