"""Give freed host memory back to the OS during loading.

glibc keeps freed blocks in its heap, so a loader that creates many per-tensor temporaries
grows its resident memory well past what it keeps. ``malloc_trim`` returns that slack; it is
glibc-only and a no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

import torch


@cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def trim_host_heap() -> None:
    """Return free heap memory to the OS (glibc); silently nothing on other platforms."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim(0)


_MADV_HUGEPAGE = 14


def advise_huge_pages(tensor: torch.Tensor) -> None:
    """Ask Linux to back a large host buffer with 2 MiB pages: filling it faults in 512x fewer pages and
    page-locking it walks 512x fewer entries. A hint only (no effect where transparent huge pages are
    off or on other platforms)."""
    libc = _libc()
    advise = getattr(libc, "madvise", None) if libc is not None else None
    nbytes = tensor.numel() * tensor.element_size()
    if advise is None or nbytes < 2**21:
        return
    start = tensor.data_ptr()
    aligned = -(-start // 4096) * 4096
    advise(ctypes.c_void_p(aligned), ctypes.c_size_t(nbytes - (aligned - start)), _MADV_HUGEPAGE)


class TrimEvery:
    """Calls ``trim_host_heap`` after every ``interval`` bytes of processed tensors."""

    def __init__(self, interval: int = 8 * 2**20) -> None:
        self.interval = interval
        self._pending = 0

    def add(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending >= self.interval:
            self._pending = 0
            trim_host_heap()
