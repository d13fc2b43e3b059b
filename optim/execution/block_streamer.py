"""Run a stack of blocks whose weights live in host memory, copying them to the GPU ahead of use.

Each streamed block's tensors are packed into one slice of a page-locked host arena. On the GPU a
ring of ``slots`` buffers, each as large as the largest block, receives the blocks in the order they
run. Copies go on their own CUDA stream and run up to ``slots - 1`` blocks ahead of the compute;
streams wait on events only, so the host never synchronises per block. Compressed weights (fp8,
int8, nf4) are streamed as stored and expanded on the GPU by their layers' forward.

Weights the loader left in the model files (see optim/files/file_tensors.py) are either read into
the arena in the background (optim/execution/arena_fill.py: a block waits only until its own slice
is in) or, on a host short of RAM (``in_files``, or the first ``first_in_files`` blocks), read from
the files at each use into a ring of ``read_ahead`` page-locked staging buffers and copied the same
way. The reads run on their own thread, up to ``read_ahead`` blocks ahead of the copies, and a copy
whose read is not in yet is left for later instead of holding up the compute queued before it.

Without CUDA the same bookkeeping runs with synchronous copies (that is how the CPU tests check
that every block always computes with its own weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..files.host_memory import TrimEvery, trim_host_heap
from ..files.tensor_layout import ModuleLayout, bind, current_tensors, layout_of, views
from .arena_fill import ArenaFill
from .devices import indexed
from .host_arena import ALIGN, HostArena

if TYPE_CHECKING:
    from ..files.file_tensors import FileFeed


@dataclass
class _Slot:
    buffer: torch.Tensor
    holds: int = -1  # the sequence number whose block is (being) copied here
    ready: torch.cuda.Event | None = None  # copy finished
    free: torch.cuda.Event | None = None  # compute with the previous content finished


class BlockStreamer:
    """Holds every block's weights in one host arena; :meth:`configure` picks the resident ones.

    Call :meth:`start` before a run, :meth:`enter` / :meth:`leave` around each block's forward,
    and :meth:`stop` after the run (it frees the GPU ring). Blocks are expected in ascending order,
    repeatedly (one pass per forward); any other order is still correct, only slower.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        device: torch.device,
        skip: Callable[[str], bool] = lambda name: False,
        pin: bool = True,
        feed: FileFeed | None = None,
        in_files: bool = False,
        first_in_files: int = 0,
        read_ahead: int = 2,
    ) -> None:
        """``feed`` has the recipes of the tensors the loader left in the files: they are read into the
        arena in the background, or, for every block with ``in_files`` (for the first ``first_in_files``
        blocks otherwise), from the files at each use, ``read_ahead`` blocks ahead (no arena)."""
        self.device = indexed(device)
        self._pin = pin and device.type == "cuda"
        self._layouts: list[ModuleLayout] = [layout_of(b, skip) for b in blocks]
        self.slot_bytes = max((lay.nbytes for lay in self._layouts), default=0)
        self._in_files = frozenset(range(len(self._layouts) if in_files else min(first_in_files, len(self._layouts))))
        if any(feed is None or not feed.covers(self._layouts[b]) for b in self._in_files):
            # The loader leaves either all of a block's weights in the files or none of them.
            raise ValueError("some of these blocks' weights are neither in memory nor readable from the files")
        self._feed = feed if self._in_files else None
        if read_ahead < 2:
            raise ValueError("reading blocks from the files needs at least 2 staging buffers")
        self._read_ahead = read_ahead
        self._reader: ThreadPoolExecutor | None = None
        self._reads: dict[int, Future] = {}  # sequence -> the read of its block into staging[sequence % read_ahead]
        self._staging_copied: list[torch.cuda.Event | None] = [None] * read_ahead  # last copy out of each buffer
        offsets, total = [], 0
        for block, lay in enumerate(self._layouts):
            offsets.append(total)
            if block not in self._in_files:
                total += -(-lay.nbytes // ALIGN) * ALIGN  # each slice page-locks on its own
        self.host_bytes = total
        self._offsets = offsets
        # Locked slice by slice once filled: the blocks' current tensors are freed one by one as they are
        # copied, and slices read from the files arrive in the background.
        self._arena = HostArena(self.host_bytes, pin=self._pin, lock_now=False)
        self._fill = ArenaFill()
        trim = TrimEvery(256 * 2**20)
        self._staging: HostArena | None = None
        self._home: list[list[torch.Tensor]] = []
        for block, (lay, offset) in enumerate(zip(self._layouts, offsets, strict=True)):
            if block in self._in_files:  # placeholders: the values are read at each use
                self._home.append(current_tensors(lay))
                continue
            base = self._arena.view(offset, lay.nbytes)
            home = views(lay, base)
            from_files = []
            for place, now, view in zip(lay.places, current_tensors(lay), home, strict=True):
                recipe = feed.recipe(place) if feed is not None else None
                if recipe is None:
                    view.copy_(now)  # read at load (converted or quantized): copied in now
                else:
                    from_files.append((recipe, view))
            bind(lay, home)
            self._home.append(home)
            self._fill.queue(block, from_files, lambda o=offset, n=lay.nbytes: self._arena.lock_range(o, n))
            trim.add(lay.nbytes)
        trim_host_heap()
        self._resident: dict[int, torch.Tensor] = {}  # block -> its persistent GPU copy
        # Resident blocks whose host slice was still filling when placed: their GPU copy is made as soon as
        # the slice is in (on the filling thread, on _place_stream); a run waits in enter() for this event.
        self._arriving: dict[int, Future] = {}
        self._place_stream: torch.cuda.Stream | None = None
        self.order: list[int] = []
        self._position: dict[int, int] = {}
        self._slot_count = 2
        self._slots: list[_Slot] = []
        self._slot_views: list[list[list[torch.Tensor]]] = []
        self._sequence = 0
        self._active: dict[int, int] = {}  # block index -> slot it computes from
        self._copy_stream: torch.cuda.Stream | None = None
        self._resident_views: dict[int, list[torch.Tensor]] = {}  # block -> views of its resident copy
        # The first streamer binds its blocks' GPU copies for good; a follower (another GPU, see follower())
        # binds a block only inside bound(), and puts back what was bound before.
        self._binds = True

    def follower(self, device: torch.device) -> BlockStreamer:
        """A streamer for the same blocks on another GPU: its own resident copies and ring, filled from this
        streamer's host arena (no second host copy). It binds a block's weights only inside :meth:`bound`,
        so several GPUs take turns computing the same modules. Release followers before this streamer."""
        twin = object.__new__(BlockStreamer)
        twin.__dict__.update(self.__dict__)  # the host side (layouts, arena, fill, file feed) is shared
        twin.device = indexed(device)
        twin._binds = False
        twin._resident, twin._resident_views, twin._arriving = {}, {}, {}
        twin._place_stream = twin._copy_stream = None
        twin.order, twin._position, twin._slots, twin._slot_views, twin._active = [], {}, [], [], {}
        twin._sequence = 0
        # Blocks read from the files at each use: this GPU reads them itself, into its own staging buffers.
        twin._reader, twin._reads, twin._staging = None, {}, None
        twin._staging_copied = [None] * self._read_ahead
        return twin

    def configure(
        self, resident: Sequence[int], slots: int = 2, placement: Mapping[int, torch.device] | None = None
    ) -> None:
        """Keep ``resident`` blocks on a GPU for good and stream all others through ``slots`` buffers.

        ``placement`` names another GPU for some resident blocks (a block split over several GPUs);
        the others stay on this streamer's device, where the ring is.
        """
        if slots < 2:
            raise ValueError("block streaming needs at least 2 slots (one computing, one loading)")
        self.stop()
        placement = placement or {}
        keep = {block: indexed(placement.get(block, self.device)) for block in resident}
        self._settle()  # no copy may still be landing in memory about to be dropped
        for block in [b for b, copy in self._resident.items() if keep.get(b) != copy.device]:
            if self._binds:
                bind(self._layouts[block], self._home[block])
            del self._resident[block], self._resident_views[block]
        for block in sorted(set(keep) - set(self._resident)):
            from_arena = block not in self._in_files
            if keep[block].type == "cpu" and from_arena and self._binds:
                self._fill.wait(block)  # a CPU computes from the arena itself, without a hook per block
                continue
            if keep[block] == self.device and self._pin and from_arena:
                copy = self._place_when_filled(block)
            else:  # a follower on the CPU (the tests' second device) keeps a copy of its own too
                copy = self._host_copy(block).to(keep[block], copy=True)
            self._resident[block] = copy
            self._resident_views[block] = views(self._layouts[block], copy)
            if self._binds:
                bind(self._layouts[block], self._resident_views[block])
        self.order = [b for b in range(len(self._layouts)) if b not in keep]
        self._position = {block: p for p, block in enumerate(self.order)}
        self._slot_count = slots
        self.slot_bytes = max((self._layouts[b].nbytes for b in self.order), default=0)

    def _place_when_filled(self, block: int) -> torch.Tensor:
        """A GPU buffer for ``block`` that receives its bytes as soon as its host slice is filled, so a run
        (prompt encoding, the first step) starts while later blocks still arrive; :meth:`enter` waits."""
        nbytes = self._layouts[block].nbytes
        copy = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        source = self._arena.view(self._offsets[block], nbytes)
        if self._place_stream is None:
            self._place_stream = torch.cuda.Stream(self.device)
        stream, arrived = self._place_stream, Future()
        self._arriving[block] = arrived

        def place(filled: Future | None) -> None:
            try:
                if filled is not None:
                    filled.result()  # a failed or cancelled fill fails the run that needs this block
                # This runs on the filling thread, outside the caller's inference mode (thread-local), and
                # ``copy`` is an inference tensor when the load ran inside one (ComfyUI runs every node so).
                with torch.inference_mode(), torch.cuda.stream(stream):  # queued, not waited for: page-locked
                    copy.copy_(source, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(stream)
                arrived.set_result(event)
            except BaseException as error:  # noqa: BLE001 - handed to the run that waits for this block
                arrived.set_exception(error)

        self._fill.when_filled(block, place)
        return copy

    def _settle(self) -> None:
        """Wait until every GPU copy queued by :meth:`_place_when_filled` has landed (errors are the run's)."""
        for arrived in self._arriving.values():
            try:
                arrived.result().synchronize()
            except BaseException:  # noqa: BLE001 - a failed fill: nothing was copied
                pass
        self._arriving.clear()

    @contextmanager
    def bound(self, block: int) -> Iterator[None]:
        """Compute ``blocks[block]`` with this GPU's copy of its weights inside this context (call between
        :meth:`enter` and :meth:`leave`; a no-op for the first streamer, which :meth:`enter` binds)."""
        if self._binds:
            yield
            return
        layout = self._layouts[block]
        resident = self._resident_views.get(block)
        mine = resident if resident is not None else self._slot_views[self._position[block]][self._active[block]]
        before = current_tensors(layout)
        bind(layout, mine)
        try:
            yield
        finally:
            bind(layout, before)

    @property
    def gpu_bytes(self) -> int:
        """Bytes of block weights this streamer keeps on GPUs between runs (its resident copies)."""
        return sum(c.numel() for c in self._resident.values() if c.device.type != "cpu")

    @property
    def streamed(self) -> tuple[int, ...]:
        return tuple(self.order)

    @property
    def reads_files(self) -> bool:
        """True when blocks' weights are read from the model files at each use."""
        return self._feed is not None

    @property
    def blocks_in_files(self) -> int:
        """How many blocks are read from the model files at each use."""
        return len(self._in_files)

    def _host_copy(self, block: int) -> torch.Tensor:
        """The block's bytes on the host: its arena slice, or a fresh buffer read from the files."""
        nbytes = self._layouts[block].nbytes
        if block not in self._in_files:
            self._fill.wait(block)
            return self._arena.view(self._offsets[block], nbytes)
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        self._feed.read_into(self._layouts[block], buffer)
        return buffer

    def wait_until_filled(self) -> None:
        """Return once every block's weights are in host memory (those read in the background included)
        and every resident block's GPU copy is made."""
        for block in range(len(self._layouts)):
            self._fill.wait(block)
        self._settle()

    def start(self) -> None:
        """Allocate the GPU ring and begin copying the first blocks."""
        if not self.order or self._slots:
            return
        cuda = self.device.type == "cuda"
        if cuda:
            self._copy_stream = torch.cuda.Stream(self.device)
        staging_bytes = self._read_ahead * self.slot_bytes
        if any(b in self._in_files for b in self.order) and (
            self._staging is None or self._staging.nbytes < staging_bytes
        ):
            if self._staging is not None:
                self._staging.release()
            # Kept until release(): locking pages costs more than the reads it would save to redo it.
            self._staging = HostArena(staging_bytes, pin=self._pin)
            self._staging_copied = [None] * self._read_ahead
        for _ in range(self._slot_count):
            buffer = torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device)
            events = (torch.cuda.Event(), torch.cuda.Event()) if cuda else (None, None)
            self._slots.append(_Slot(buffer, -1, *events))
        # Views into every slot for every block, made once: binding is then attribute writes only.
        self._slot_views = [[views(self._layouts[b], slot.buffer) for slot in self._slots] for b in self.order]
        self._sequence = 0
        if self._copy_stream is not None:
            # Fresh slots may reuse memory that queued compute still reads: copy only after that work.
            self._copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        self._schedule_reads(0)
        for ahead in range(self._slot_count - 1):
            if self._fetch(ahead, wait=False) is None:
                break

    def stop(self) -> None:
        """Wait for outstanding copies, point every block back at host memory and free the ring."""
        self._drop_reads(lambda sequence: True)
        if self._copy_stream is not None:
            self._copy_stream.synchronize()
        if self._binds:
            for block in list(self._active):
                bind(self._layouts[block], self._home[block])
        self._active.clear()
        self._slots.clear()
        self._slot_views = []
        self._copy_stream = None

    def _block_at(self, sequence: int) -> int:
        return self.order[sequence % len(self.order)]

    def _staging_view(self, sequence: int) -> torch.Tensor:
        nbytes = self._layouts[self._block_at(sequence)].nbytes
        return self._staging.view((sequence % self._read_ahead) * self.slot_bytes, nbytes)

    def _schedule_reads(self, sequence: int) -> None:
        """Queue the file reads of the blocks that run from ``sequence`` on, as far as staging buffers are free."""
        if self._feed is None or self._staging is None:
            return
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwenfit-block-reader")
        for ahead in range(sequence, sequence + self._read_ahead):
            if ahead in self._reads or self._block_at(ahead) not in self._in_files:
                continue
            if ahead - self._read_ahead in self._reads:
                break  # its staging buffer still waits to be copied out: the reads go in order
            # The read may only overwrite the buffer once the last copy out of it has finished.
            copied = self._staging_copied[ahead % self._read_ahead]
            layout, out = self._layouts[self._block_at(ahead)], self._staging_view(ahead)
            self._reads[ahead] = self._reader.submit(self._read_block, layout, out, copied)

    def _read_block(self, layout: ModuleLayout, out: torch.Tensor, copied: torch.cuda.Event | None) -> None:
        if copied is not None:
            copied.synchronize()
        # Inference mode is per thread: the staging buffer is an inference tensor when a run made it.
        with torch.inference_mode():
            self._feed.read_into(layout, out)

    def _drop_reads(self, stale: Callable[[int], bool]) -> None:
        """Forget the queued reads of the sequences ``stale`` accepts, once they have finished (a read may
        not land in a buffer handed to another block)."""
        for sequence in [s for s in self._reads if stale(s)]:
            try:
                self._reads.pop(sequence).result()
            except BaseException:  # noqa: BLE001 - nobody uses what it read; the next read reports the files' state
                pass

    def _fetch(self, sequence: int, wait: bool = True) -> _Slot | None:
        """Make sure the block that runs at ``sequence`` is in (or on its way to) its slot. Without ``wait``,
        a block whose file read is not in yet is left for later (None)."""
        slot = self._slots[sequence % self._slot_count]
        if slot.holds == sequence:
            return slot
        block = self._block_at(sequence)
        nbytes = self._layouts[block].nbytes
        from_files = block in self._in_files
        if not from_files:
            self._fill.wait(block)
            source = self._arena.view(self._offsets[block], nbytes)
        else:
            self._drop_reads(lambda s: s < sequence)  # a jump out of the usual order skipped them
            self._schedule_reads(sequence)
            read = self._reads[sequence]
            if not wait and not read.done():
                return None
            del self._reads[sequence]
            read.result()
            source = self._staging_view(sequence)
        target = slot.buffer[:nbytes]
        if self._copy_stream is None:
            target.copy_(source)
        else:
            with torch.cuda.stream(self._copy_stream):
                self._copy_stream.wait_event(slot.free)
                target.copy_(source, non_blocking=True)
                slot.ready.record(self._copy_stream)
                if from_files:
                    copied = torch.cuda.Event()
                    copied.record(self._copy_stream)
                    self._staging_copied[sequence % self._read_ahead] = copied
        slot.holds = sequence
        if from_files:
            self._schedule_reads(sequence + 1)
        return slot

    def enter(self, block: int) -> None:
        """Before ``blocks[block]`` runs: its weights are on the GPU (the compute stream waits for them)."""
        p = self._position.get(block)
        if p is None:  # resident: on the CPU it computes from the arena; on a GPU its copy may still be landing
            arrived = self._arriving.pop(block, None)
            if arrived is not None:
                torch.cuda.current_stream(self.device).wait_event(arrived.result())
            self._fill.wait(block)
            return
        if not self._slots:
            self.start()
        n = len(self.order)
        if self._sequence % n != p:  # out of the usual order: jump to the next pass that runs this block
            self._sequence += (p - self._sequence) % n
        sequence = self._sequence
        slot = self._fetch(sequence)
        if slot.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(slot.ready)
        index = sequence % self._slot_count
        if self._binds:
            bind(self._layouts[block], self._slot_views[p][index])
        self._active[block] = index
        for ahead in range(1, self._slot_count):
            if self._fetch(sequence + ahead, wait=False) is None:
                break  # the copies go in order; the next enter() or leave() tries again

    def leave(self, block: int) -> None:
        """After ``blocks[block]`` was queued: its slot may be refilled once that compute is done."""
        index = self._active.pop(block, None)
        if index is None:
            return
        slot = self._slots[index]
        if slot.free is not None:
            slot.free.record(torch.cuda.current_stream(self.device))
        if self._binds:
            bind(self._layouts[block], self._home[block])
        self._sequence += 1
        # The slot just left is the next one to refill: queue it now so copies stay ahead.
        for ahead in range(self._slot_count):
            if self._fetch(self._sequence + ahead, wait=False) is None:
                break

    def release(self) -> None:
        """Free the GPU copies and unlock the host arena (the pipeline is being dropped)."""
        if not self._binds:  # a follower: the arena is its first streamer's
            self._settle()
            self.configure(())
            self._free_staging()
            return
        self._fill.cancel()  # no read may land in memory that is about to be freed
        self._settle()
        self.configure(())
        # Freed now, not when the last view goes: a view held anywhere (a module someone keeps) must not
        # keep tens of GB while the next model loads.
        self._arena.free()
        self._home = [[] for _ in self._layouts]
        self._free_staging()

    def _free_staging(self) -> None:
        if self._staging is not None:
            self._staging.free()
            self._staging = None
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
