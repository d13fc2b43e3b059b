"""Sequence parallelism for one forward (CFG off): the image tokens cut over GPUs, Ulysses-style.

Without CFG there is one sample, so CFG-parallel has nothing to share; the image tokens are cut
instead. Every GPU runs every block (its weights resident or streamed through its own ring) on its
share of the tokens. Everything in a block is per token except attention, which needs every token:
before attention the GPUs trade (their tokens, all heads) for (all tokens, their heads), each
attends with its heads over the whole joint sequence, and the result is traded back.

Decisions:

- **One process, one thread per GPU.** Each GPU's thread queues its blocks' kernels (the other GPUs
  compute with module shells bound to their own copies of the weights, optim/execution/module_shells.py),
  and the exchanges are copies between GPUs (NVLink or PCIe peer copies; CUDA orders them against both
  GPUs' queues) handed over by :class:`Trades`. Measured on two H200s, one thread queuing both GPUs'
  eager kernels could not keep them busy (0.63x of one GPU; bench/results/several_gpus_h200x2_2026-11-30).
  One process per GPU with NCCL would need the weights' page-locked host arena in every process, or one
  shared between processes: the streaming replicas read one arena, so it stays one process.
- **Shares follow speed**: GPU ``r`` attends with ``shares[r]`` heads and holds the same share of the
  image tokens (optim/planning/work_split.py), so a slower GPU gets less of both. Shares need not be
  equal and spans may be uneven (no padding: peer copies take any shape).
- **Text tokens are replicated**, not split: every GPU keeps the whole text stream (a few hundred
  tokens beside 4096..16k image tokens) and computes its projections and MLP itself. Its math is
  then the single-GPU math on every GPU, and the text never has to be gathered before the next block.
  The text's attention output of a head group exists on that group's GPU only, so it travels back
  with the image tokens.
- Image tokens are cut in order; the latents and the references are one image stream in the engine,
  so references are cut like the latents. RoPE tables and the 2511 modulation index are cut the same
  way; RoPE is applied per token before the exchange.
- Q, K and V travel stacked, so a block costs two exchanges.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, TypeVar

import torch

Result = TypeVar("Result")


def _bounds(shares: Sequence[int]) -> list[tuple[int, int]]:
    ends = list(accumulate(shares))
    return [(end - share, end) for share, end in zip(shares, ends, strict=True)]


def heads_for_rank(
    rank: int,
    images: Sequence[torch.Tensor],
    text: torch.Tensor,
    shares: Sequence[int],
    device: torch.device,
) -> torch.Tensor:
    """(each GPU's image tokens, all heads) -> (all tokens, GPU ``rank``'s heads).

    ``images[r]`` [..., tokens of r, heads, dim] lives on GPU ``r``; ``text`` [..., text, heads, dim] is this
    GPU's (the same on every GPU). Returns [..., text + all image tokens, shares[rank], dim] on ``device``,
    the text first (the single-GPU order)."""
    first, last = _bounds(shares)[rank]
    parts = [text[..., first:last, :]] + [image[..., first:last, :].to(device, non_blocking=True) for image in images]
    return torch.cat(parts, dim=-3)


def tokens_for_rank(
    rank: int,
    joints: Sequence[torch.Tensor],
    text_tokens: int,
    spans: Sequence[tuple[int, int]],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`heads_for_rank` for the attention's output.

    ``joints[j]`` [..., text + all image tokens, heads of j, dim] lives on GPU ``j``. Returns, on ``device``:
    (the whole text [..., text, heads, dim], GPU ``rank``'s image tokens ``spans[rank]`` [..., tokens, heads,
    dim]), the head groups in GPU order (the single-GPU head order)."""
    start, stop = spans[rank]
    text = [joint[..., :text_tokens, :, :].to(device, non_blocking=True) for joint in joints]
    image = [
        joint[..., text_tokens + start : text_tokens + stop, :, :].to(device, non_blocking=True) for joint in joints
    ]
    return torch.cat(text, dim=-2), torch.cat(image, dim=-2)


class Trades:
    """GPUs driven by threads of this process handing each other tensors between their steps.

    ``trade(rank, item, take)`` leaves ``item`` for the others, waits until every rank has left its own, and
    returns ``take(items)`` (all ranks' items in rank order), then waits until every rank has taken what it
    needs, so no item is replaced while another rank still reads it. Copies between GPUs that ``take`` queues
    read the tensors in the order of their GPU's queue, so no GPU waits on the host."""

    def __init__(self, world: int, timeout_s: float = 600.0) -> None:
        self.world = world
        self._barrier = threading.Barrier(world, timeout=timeout_s)
        self._items: list[Any] = [None] * world

    def trade(self, rank: int, item: Any, take: Callable[[list[Any]], Result]) -> Result:
        self._items[rank] = item
        self._barrier.wait()
        taken = take(list(self._items))
        self._barrier.wait()
        return taken

    def run(self, work: Callable[[int], Result]) -> list[Result]:
        """``work(rank)`` for every rank at once, rank 0 on this thread (the others on threads of their own,
        in this thread's inference and grad modes); the results by rank. A rank's error stops the others and
        is raised here."""
        results: list[Any] = [None] * self.world
        errors: list[BaseException] = []
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def one(rank: int) -> None:
            try:
                with torch.set_grad_enabled(grad), torch.inference_mode(inference):
                    results[rank] = work(rank)
            except BaseException as error:  # noqa: BLE001 - raised on the caller's thread below
                errors.append(error)
                self._barrier.abort()

        threads = [threading.Thread(target=one, args=(r,), name=f"qwenfit-gpu-{r}") for r in range(1, self.world)]
        for thread in threads:
            thread.start()
        one(0)
        for thread in threads:
            thread.join()
        if errors:
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        return results
