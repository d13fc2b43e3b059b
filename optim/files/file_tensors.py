"""Weights that stay in the model files until they are used, read straight into a staging buffer.

The text encoder runs once per new prompt and the modulation layers once per new schedule; on a
machine short of host RAM, keeping them in memory between uses costs more than reading them
again. A :class:`FileTensor` says how one module tensor is reproduced from the files (read as
stored, cast when the plan's dtype differs); a :class:`FileFeed` fills a module's whole layout.
Only tensors whose planned form is the stored bytes or a plain cast can stay in the files: a
weight quantized or merged with a LoRA on load has no copy on disk to read back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .gguf_file import GgufFile
from .parallel_reads import byte_pieces, run_reads
from .safetensors_file import SafetensorsFile
from .tensor_layout import ModuleLayout, views


@dataclass(frozen=True)
class FileTensor:
    """One module tensor as the files hold it: ``key`` in ``file``, or a constant (an fp8 file
    without scales has an implied scale of 1)."""

    file: SafetensorsFile | GgufFile | None
    key: str
    constant: float | None = None

    def reads_straight(self, out: torch.Tensor) -> bool:
        """True when the stored bytes are ``out``'s bytes (no cast): they can be read straight into it."""
        if self.file is None:
            return False
        info = self.file.tensors[self.key]
        if info.nbytes != out.numel() * out.element_size():  # one scale stored for a whole tensor, kept per row
            return False
        # fp8 weights may be stored as uint8 (mixed files): same bytes, another name.
        return info.dtype == out.dtype or (info.dtype.itemsize == 1 and out.element_size() == 1)

    def pieces(self, out: torch.Tensor) -> list[Callable[[], None]]:
        """Reads that together write the values into ``out``: pieces of :data:`PIECE_BYTES` when the bytes
        are read as stored, one read for a cast or a constant. They may run in parallel."""
        if not self.reads_straight(out):
            return [lambda: self.read_into(out)]
        return byte_pieces(
            lambda offset, piece: self.file.read_bytes(self.key, offset, piece), out.reshape(-1).view(torch.uint8)
        )

    def read_into(self, out: torch.Tensor) -> None:
        """Write the tensor's values into ``out`` (a CPU tensor of the module's dtype and shape)."""
        if self.file is None:
            out.fill_(self.constant)
        elif self.reads_straight(out):
            # Straight from the file into the buffer: no temporary copy on the host.
            self.file.read(self.key, out=out.view(self.file.tensors[self.key].dtype))
        else:
            value = self.file.read(self.key)
            out.copy_(value.reshape(out.shape) if value.numel() == out.numel() else value.reshape(()))


def read_all(jobs: Iterable[tuple[FileTensor, torch.Tensor]]) -> int:
    """Write every ``(recipe, out)`` pair's values into its ``out``, in parallel; the bytes written."""
    reads, nbytes = [], 0
    for recipe, out in jobs:
        reads.extend(recipe.pieces(out))
        nbytes += out.numel() * out.element_size()
    run_reads(reads)
    return nbytes


class FileFeed:
    """Reads the tensors of ``root``'s submodules from the files, by their place in ``root``."""

    def __init__(self, root: nn.Module, tensors: dict[str, FileTensor]) -> None:
        self.tensors = tensors
        self._names = {}
        for prefix, owner in root.named_modules():
            for name in (*owner._parameters, *owner._buffers):
                self._names[(id(owner), name)] = f"{prefix}.{name}" if prefix else name

    def recipe(self, place) -> FileTensor | None:
        """How to read one tensor place of a layout, or None when the loader read it into memory."""
        return self.tensors.get(self._names.get((id(place.owner), place.name), ""))

    def covers(self, layout: ModuleLayout) -> bool:
        """True when every tensor of ``layout`` can be read from the files."""
        return bool(layout.places) and all(self.recipe(p) is not None for p in layout.places)

    def read_into(self, layout: ModuleLayout, base: torch.Tensor) -> None:
        """Fill ``base`` (uint8, at least ``layout.nbytes``) with the module's tensors from the files."""
        read_all(zip(map(self.recipe, layout.places), views(layout, base), strict=True))


def placeholder(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A host tensor of ``shape`` that owns one element: it stands for weights left in the files.
    (Meta tensors cannot be re-pointed at real memory.) Floats hold NaN, so a use without the
    real weights shows up as a non-finite output instead of a plausible image."""
    one = torch.empty((), dtype=dtype)
    if dtype.is_floating_point:
        one.fill_(float("nan"))
    return one.expand(shape)


def drop_weights(module: nn.Module) -> None:
    """Point every parameter and buffer of ``module`` at a placeholder, so whoever still holds the module
    (ComfyUI keeps node outputs) holds no weight memory: the next model can load without a double peak."""
    for owner in module.modules():
        for tensors, wrap in ((owner._parameters, lambda t: nn.Parameter(t, False)), (owner._buffers, lambda t: t)):
            for name, tensor in tensors.items():
                if tensor is None or is_placeholder(tensor) or (tensor.numel() <= 1 and _owns_bytes(tensor)):
                    continue  # a view of a freed arena (a scale too) is replaced: read, it would crash the process
                tensors[name] = wrap(placeholder(tuple(tensor.shape), tensor.dtype))
                _give_back(tensor)


def _give_back(tensor: torch.Tensor) -> None:
    """Free a dropped weight's memory now, even if a reference to it survives somewhere."""
    try:
        tensor.untyped_storage().resize_(0)
    except RuntimeError:  # memory torch does not own (a memory map, numpy): it goes with its last reference
        pass


def holds_no_memory(tensor: torch.Tensor) -> bool:
    """True for a placeholder (its storage is one element, whatever its shape) and for a view of memory
    already given back (its storage is empty)."""
    return tensor.untyped_storage().nbytes() <= tensor.element_size() < tensor.numel() * tensor.element_size()


def _owns_bytes(tensor: torch.Tensor) -> bool:
    return tensor.untyped_storage().nbytes() > 0


def is_placeholder(tensor: torch.Tensor) -> bool:
    """True for a :func:`placeholder`: one element of storage, more in its shape."""
    return tensor.untyped_storage().nbytes() == tensor.element_size() < tensor.numel() * tensor.element_size()


class FileFeeds:
    """The recipes of the tensors the loader left in the files, per module: made by the loader, handed
    to the engine with the pipeline."""

    def __init__(self) -> None:
        self._tensors: dict[int, dict[str, FileTensor]] = {}

    def add(self, module: nn.Module, tensors: dict[str, FileTensor]) -> None:
        if tensors:
            self._tensors.setdefault(id(module), {}).update(tensors)

    def feed(self, module: nn.Module) -> FileFeed | None:
        """The feed for ``module`` (None when every tensor of it was read)."""
        tensors = self._tensors.get(id(module))
        return FileFeed(module, tensors) if tensors else None
