"""Reads from the model files run on reader threads, large tensors in pieces.

One thread copies from the page cache at a fraction of the memory bandwidth, and file reads release
the GIL: several threads reading pieces of the same tensors fill memory several times faster. Large
tensors are cut into pieces so that every thread stays busy until the last tensor of a block is in.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

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
