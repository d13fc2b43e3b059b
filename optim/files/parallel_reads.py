"""Reads from the model files run on reader threads, large tensors in pieces.

One thread copies from the page cache at a fraction of the memory bandwidth, and file reads release
the GIL: several threads reading pieces of the same tensors fill memory several times faster. Large
tensors are cut into pieces so that every thread stays busy until the last tensor of a block is in.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

# Half the cores: on a 16-core H200 host 8 readers filled 28 GB as fast as 16 (3.2 s), and the run that starts
# meanwhile (prompt encoding is launch-bound Python) encoded in 2.4 s instead of 4.2-5.6 s (bench/results/
# load_h200_2026-11-30/7_reader_threads.json).
READERS = max(2, min(8, (os.cpu_count() or 4) // 2))
PIECE_BYTES = 16 * 2**20  # large enough that a read is all copying, small enough to share a block out
_pool = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="qwenfit-file-reader")


_on_reader = threading.local()


def _run(read: Callable[[], None]) -> None:
    _on_reader.active = True
    # Inference mode is per thread: buffers made inside a run are inference tensors.
    with torch.inference_mode():
        read()


def run_reads(reads: Sequence[Callable[[], None]]) -> None:
    """Run every read on the reader threads; waits for all and re-raises the first error. Called from a
    reader thread (a read that reads in pieces itself), the reads run right there: waiting for the pool
    from inside it could wait forever."""
    if getattr(_on_reader, "active", False) or len(reads) == 1:
        for read in reads:
            read()
        return
    list(_pool.map(_run, reads))  # list() waits for every read


def byte_pieces(read_piece: Callable[[int, torch.Tensor], None], flat: torch.Tensor) -> list[Callable[[], None]]:
    """Reads that together fill ``flat`` (uint8): ``read_piece(offset, piece)`` for each :data:`PIECE_BYTES`."""
    return [
        (lambda start=start: read_piece(start, flat[start : start + PIECE_BYTES]))
        for start in range(0, flat.numel(), PIECE_BYTES)
    ]


def read_tensor_bytes(path: Path, start: int, nbytes: int, name: str, offset: int, out: torch.Tensor) -> int:
    """Bytes ``offset`` .. ``offset + out.numel()`` of the tensor ``name`` stored at ``start`` .. ``start +
    nbytes`` of ``path``, into ``out`` (contiguous CPU uint8); returns how many arrived (fewer: the file ends
    early). A piece of a tensor, so several threads can fill one large tensor together."""
    if out.dtype != torch.uint8 or not out.is_contiguous() or out.device.type != "cpu":
        raise ValueError("read_bytes writes into a contiguous CPU uint8 tensor")
    if offset < 0 or offset + out.numel() > nbytes:
        raise ValueError(f"bytes {offset}..{offset + out.numel()} are outside tensor {name!r}")
    if not out.numel():
        return 0
    with open(path, "rb") as f:
        f.seek(start + offset)
        # A ctypes view of the bytes, not .numpy(): numpy would pin the storage's size for good, and a
        # dropped pipeline's arena must be able to give its memory back (HostArena.free).
        return f.readinto(memoryview((ctypes.c_ubyte * out.numel()).from_address(out.data_ptr())))
