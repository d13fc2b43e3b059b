"""Weights that stay in the model files until they are used, read straight into a staging buffer.

The text encoder runs once per new prompt and the modulation layers once per new schedule; on a
machine short of host RAM, keeping them in memory between uses costs more than reading them
again. A :class:`FileTensor` says how one module tensor is reproduced from the files (read as
stored, cast when the plan's dtype differs); a :class:`FileFeed` fills a module's whole layout.
Only tensors whose planned form is the stored bytes or a plain cast can stay in the files: a
weight quantized or merged with a LoRA on load has no copy on disk to read back.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from .safetensors_file import SafetensorsFile
from .tensor_layout import ModuleLayout, views


@dataclass(frozen=True)
class FileTensor:
    """One module tensor as the files hold it: ``key`` in ``file``, or a constant (an fp8 file
    without scales has an implied scale of 1)."""

    file: SafetensorsFile | None
    key: str
    constant: float | None = None

    def read_into(self, out: torch.Tensor) -> None:
        """Write the tensor's values into ``out`` (a CPU tensor of the module's dtype and shape)."""
        if self.file is None:
            out.fill_(self.constant)
            return
        stored = self.file.tensors[self.key].dtype
        # fp8 weights may be stored as uint8 (mixed files): same bytes, another name.
        if stored == out.dtype or (stored.itemsize == 1 and out.element_size() == 1):
            # Straight from the file into the buffer: no temporary copy on the host.
            self.file.read(self.key, out=out.view(stored))
        else:
            out.copy_(self.file.read(self.key).reshape(out.shape))


# File reads release the GIL and one thread copies from the page cache at a fraction of the memory
# bandwidth: a few readers in parallel fill a block several times faster.
_READERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="qwenfit-file-reader")


def _read_job(job: tuple[FileTensor, torch.Tensor]) -> None:
    # Inference mode is per thread: buffers made inside a run are inference tensors.
    with torch.inference_mode():
        job[0].read_into(job[1])


class FileFeed:
    """Reads the tensors of ``root``'s submodules from the files, by their place in ``root``."""

    def __init__(self, root: nn.Module, tensors: dict[str, FileTensor]) -> None:
        self.tensors = tensors
        self._names = {}
        for prefix, owner in root.named_modules():
            for name in (*owner._parameters, *owner._buffers):
                self._names[(id(owner), name)] = f"{prefix}.{name}" if prefix else name

    def _recipe(self, place) -> FileTensor | None:
        return self.tensors.get(self._names.get((id(place.owner), place.name), ""))

    def covers(self, layout: ModuleLayout) -> bool:
        """True when every tensor of ``layout`` can be read from the files."""
        return bool(layout.places) and all(self._recipe(p) is not None for p in layout.places)

    def read_into(self, layout: ModuleLayout, base: torch.Tensor) -> None:
        """Fill ``base`` (uint8, at least ``layout.nbytes``) with the module's tensors from the files."""
        jobs = [(self._recipe(p), v) for p, v in zip(layout.places, views(layout, base), strict=True)]
        # list() waits for every read and re-raises the first error.
        list(_READERS.map(_read_job, jobs))


def placeholder(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A host tensor of ``shape`` that owns one element: it stands for weights left in the files.
    (Meta tensors cannot be re-pointed at real memory.) Floats hold NaN, so a use without the
    real weights shows up as a non-finite output instead of a plausible image."""
    one = torch.empty((), dtype=dtype)
    if dtype.is_floating_point:
        one.fill_(float("nan"))
    return one.expand(shape)


def holds_no_memory(tensor: torch.Tensor) -> bool:
    """True for a placeholder (its storage is one element, whatever its shape)."""
    return tensor.untyped_storage().nbytes() <= tensor.element_size() < tensor.numel() * tensor.element_size()


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
