"""Filling host arenas from the model files in the background, block by block, in the order of use.

Loading used to read every weight, copy it into its arena and page-lock the arena before the first
step could start. Now the loader leaves the weights whose stored bytes are their planned form in the
files; each streamer queues its blocks here, and one filler thread reads them straight into their
arena slices (on the reader threads, see optim/files/parallel_reads.py) and page-locks each slice as it
is filled. A run waits only for the block it needs next, so prompt encoding and the first step start
while later blocks are still arriving. Queued blocks fill first come, first served: the engine queues
the text encoder first, then the modulation layers, then the transformer blocks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass

import torch

from ..files.file_tensors import FileTensor, read_all

# One filler: blocks fill in the order they were queued, each with every reader thread; one locker.
_filler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwenfit-arena-filler")
_locker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwenfit-arena-locker")
_stats_lock = threading.Lock()


@dataclass
class FillStats:
    """What the background fills did since the last load began (for the load report)."""

    bytes_read: int = 0
    read_seconds: float = 0.0
    lock_seconds: float = 0.0
    started: float = 0.0  # perf_counter when the first block was queued
    finished: float = 0.0  # perf_counter when the last queued block was in
    pending: int = 0  # blocks queued and not yet filled

    def describe(self) -> str:
        if not self.started:
            return ""
        pending = not self.finished
        took = f"{self.finished - self.started:.1f} s" if not pending else "still filling"
        return (
            f"weights read into host memory in the background: {self.bytes_read / 2**30:.1f} GiB, {took} "
            f"(reading {self.read_seconds:.1f} s, page-locking {self.lock_seconds:.1f} s)"
        )


_stats = FillStats()


def begin_load() -> None:
    """Reset the statistics: a new pipeline is being loaded."""
    global _stats
    with _stats_lock:
        _stats = FillStats()


def current_stats() -> FillStats:
    """The fills of the latest load."""
    return _stats


class ArenaFill:
    """The background fills of one streamer's blocks; :meth:`wait` before a block's weights are used.

    A block is read on the filler thread, then page-locked on the locker thread while the next block is
    read: locking a slice costs a fraction of reading it, and the two overlap.
    """

    def __init__(self) -> None:
        self._done: dict[int, Future] = {}  # per block: filled and locked
        self._stages: list[Future] = []  # every read and lock task queued (cancel waits for them)
        self._cancelled = threading.Event()
        self._stats = _stats  # the load this streamer belongs to

    def _finish(self, done: Future, error: BaseException | None = None) -> None:
        if error is not None:
            done.set_exception(error)
        elif self._cancelled.is_set():
            done.cancel()
        else:
            done.set_result(None)
        with _stats_lock:
            self._stats.pending -= 1
            if not self._stats.pending:
                self._stats.finished = time.perf_counter()

    def queue(self, block: int, jobs: list[tuple[FileTensor, torch.Tensor]], lock: Callable[[], None]) -> None:
        """Read ``jobs`` (recipe, arena view) for ``block`` on the filler thread, then ``lock`` its slice."""
        done: Future = Future()
        counted = self._stats

        def locking() -> None:
            start = time.perf_counter()
            try:
                if not self._cancelled.is_set():
                    lock()
            except BaseException as error:
                self._finish(done, error)
                return
            with _stats_lock:
                counted.lock_seconds += time.perf_counter() - start
            self._finish(done)

        def reading() -> None:
            start = time.perf_counter()
            try:
                nbytes = 0 if self._cancelled.is_set() else read_all(jobs)
            except BaseException as error:
                self._finish(done, error)
                return
            with _stats_lock:
                counted.bytes_read += nbytes
                counted.read_seconds += time.perf_counter() - start
            # Queued before this task ends, so cancel() finds it once it has waited for the reads.
            self._stages.append(_locker.submit(locking))

        with _stats_lock:
            if not counted.started:
                counted.started = time.perf_counter()
            counted.finished = 0.0
            counted.pending += 1
        self._done[block] = done
        self._stages.append(_filler.submit(reading))

    def when_filled(self, block: int, then: Callable[[Future | None], None]) -> None:
        """Call ``then(future)`` once ``block`` is filled and locked: at once, on this thread, when it already
        is (``future`` None or done), else on the thread that finishes it (its ``result()`` re-raises a failure)."""
        done = self._done.get(block)
        if done is None:
            then(None)
        else:
            done.add_done_callback(then)  # calls at once when already done

    def wait(self, block: int) -> None:
        """Return once ``block`` is filled and locked; re-raises what its fill raised."""
        done = self._done.get(block)
        if done is None:
            return
        if done.done() and not done.cancelled() and done.exception() is None:
            del self._done[block]  # the common case after the first pass: a dict lookup
            return
        done.result()

    def cancel(self) -> None:
        """Stop filling (the arena is being dropped): returns once no read or lock of it is running."""
        self._cancelled.set()
        # Reads first: a read that finishes queues its lock before it ends, so the second look sees it.
        for _ in range(2):
            wait_all(list(self._stages))
        self._done.clear()
