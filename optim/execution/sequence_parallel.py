"""Sequence parallelism for one forward (CFG off): the image tokens cut over GPUs, Ulysses-style.

Without CFG there is one sample, so CFG-parallel has nothing to share; the image tokens are cut
instead. Every GPU runs every block (its weights resident or streamed through its own ring) on its
share of the tokens. Everything in a block is per token except attention, which needs every token:
before attention the GPUs trade (their tokens, all heads) for (all tokens, their heads), each
attends with its heads over the whole joint sequence, and the result is traded back.

Decisions:

- **One process drives every GPU** (optim/execution/transformer_engine.py queues each block on every
  GPU in turn, without a host wait), and the exchanges are copies between GPUs (NVLink or PCIe peer
  copies; CUDA orders them against both GPUs' queues). Measured on two H200s (bench/results/
  several_gpus_h200x2_2026-11-30): 0.232 s/step against 0.370 on one GPU; one thread per GPU, each with
  module shells of its own, ran 0.421 (the threads contend for the interpreter). One process per GPU
  with NCCL would need the weights' page-locked host arena in every process, or shared between
  processes: the streaming replicas read one arena, so it stays one process.
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
- Q, K and V travel stacked, so a block costs two exchanges. Their copies run on side streams
  (:class:`PeerCopies`): with PyTorch's own copies between GPUs both directions took turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch


class PeerCopies:
    """The copies between GPUs of one exchange, run on side streams so both directions move at once.

    PyTorch's copy between two GPUs joins the current streams of both in a two-way barrier and runs on the
    source's stream: queued from one thread, the copy one way then waits for the copy the other way, and
    each GPU's compute waits for both. Here each GPU has a send and a receive stream: the copies r -> j run
    on r's send stream once r's compute has produced the data, j's receive stream waits for them, and j's
    compute waits for its receive stream. Measured on two H200s: 0.232 -> 0.222 s/step (Edit 1024, CFG
    off). On the CPU (the tests' emulated GPUs) the copies are plain ``to``.
    """

    def __init__(self, devices: Sequence[torch.device]) -> None:
        self.devices = list(devices)
        cuda = all(d.type == "cuda" for d in self.devices) and len(set(self.devices)) == len(self.devices)
        self._send = [torch.cuda.Stream(d) for d in self.devices] if cuda else []
        self._recv = [torch.cuda.Stream(d) for d in self.devices] if cuda else []

    def move(self, pieces: Sequence[tuple[torch.Tensor, int, int]]) -> list[torch.Tensor]:
        """Each (tensor on GPU ``source``, ``source``, ``target``) on GPU ``target`` (the same tensor where
        they are equal), in order; each target's compute stream waits for what it receives."""
        if not self._send:
            return [tensor.to(self.devices[target]) for tensor, _, target in pieces]
        # Contiguous on the compute stream (each copy is then one memcpy), before the send streams wait.
        pieces = [(t if r == j else t.contiguous(), r, j) for t, r, j in pieces]
        remote = [k for k, (_, r, j) in enumerate(pieces) if r != j]
        for source in {pieces[k][1] for k in remote}:
            self._send[source].wait_stream(torch.cuda.current_stream(self.devices[source]))
        moved = [t for t, _, _ in pieces]
        for source, target in dict.fromkeys((pieces[k][1], pieces[k][2]) for k in remote):
            send, recv = self._send[source], self._recv[target]
            with torch.cuda.stream(send), torch.cuda.stream(recv):
                for k in remote:
                    tensor, r, j = pieces[k]
                    if (r, j) == (source, target):
                        moved[k] = tensor.to(self.devices[target], non_blocking=True)
                        # Used on other streams than they were made on: the allocator must not reuse them early.
                        tensor.record_stream(send)
                        moved[k].record_stream(torch.cuda.current_stream(self.devices[target]))
        for target in {pieces[k][2] for k in remote}:
            torch.cuda.current_stream(self.devices[target]).wait_stream(self._recv[target])
        return moved


def _bounds(shares: Sequence[int]) -> list[tuple[int, int]]:
    ends = list(accumulate(shares))
    return [(end - share, end) for share, end in zip(shares, ends, strict=True)]


def heads_for_ranks(
    images: Sequence[torch.Tensor],
    texts: Sequence[torch.Tensor],
    shares: Sequence[int],
    copies: PeerCopies,
) -> list[torch.Tensor]:
    """(each GPU's image tokens, all heads) -> (all tokens, each GPU's heads).

    ``images[r]`` [..., tokens of r, heads, dim] and ``texts[r]`` [..., text, heads, dim] live on
    ``copies.devices[r]`` (the text is the same on every GPU). Returns, for GPU ``j``, on its device:
    [..., text + all image tokens, shares[j], dim], the text first (the single-GPU order)."""
    bounds = _bounds(shares)
    ranks = len(images)
    pieces = [
        (image[..., first:last, :], r, j) for j, (first, last) in enumerate(bounds) for r, image in enumerate(images)
    ]
    arrived = copies.move(pieces)
    return [
        torch.cat([texts[j][..., first:last, :], *arrived[j * ranks : (j + 1) * ranks]], dim=-3)
        for j, (first, last) in enumerate(bounds)
    ]


def tokens_for_ranks(
    joints: Sequence[torch.Tensor],
    text_tokens: int,
    spans: Sequence[tuple[int, int]],
    copies: PeerCopies,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The inverse of :func:`heads_for_ranks` for the attention's output.

    ``joints[j]`` [..., text + all image tokens, heads of j, dim] on ``copies.devices[j]``. Returns, for GPU
    ``r``, on its device: (the whole text [..., text, heads, dim], its image tokens ``spans[r]``
    [..., tokens of r, heads, dim]), the head groups in GPU order (the single-GPU head order)."""
    pieces = []
    for r, (start, stop) in enumerate(spans):
        for j, joint in enumerate(joints):
            pieces.append((joint[..., :text_tokens, :, :], j, r))
            pieces.append((joint[..., text_tokens + start : text_tokens + stop, :, :], j, r))
    arrived = copies.move(pieces)
    per_rank = 2 * len(joints)
    return [
        (torch.cat(mine[0::2], dim=-2), torch.cat(mine[1::2], dim=-2))
        for mine in (arrived[r * per_rank : (r + 1) * per_rank] for r in range(len(spans)))
    ]
