"""Sequence parallelism for one forward (CFG off): the image tokens cut over GPUs, Ulysses-style.

Without CFG there is one sample, so CFG-parallel has nothing to share; the image tokens are cut
instead. Every GPU runs every block (its weights resident or streamed through its own ring) on its
share of the tokens. Everything in a block is per token except attention, which needs every token:
before attention the GPUs trade (their tokens, all heads) for (all tokens, their heads), each
attends with its heads over the whole joint sequence, and the result is traded back.

Decisions:

- **One process drives every GPU** (optim/execution/transformer_engine.py queues each block on every
  GPU in turn, without a host wait), and the exchanges are copies between GPUs (NVLink or PCIe peer
  copies on side streams, :class:`PeerCopies`). Measured on two H200s (bench/results/
  several_gpus_h200x2_2026-11-30): 0.219 s/step against 0.369 on one GPU; one thread per GPU, each with
  module shells of its own, ran 0.421 (the threads contend for the interpreter); CUDA graphs of the
  half-blocks ran 0.217 but cost 0.22 s of capture and GiBs the plan does not count. One process per GPU
  with NCCL would need the weights' page-locked host arena in every process, or shared between
  processes: the streaming replicas read one arena, so it stays one process.
- **Shares follow speed**: GPU ``r`` attends with ``shares[r]`` heads and holds the same share of the
  image tokens (optim/planning/work_split.py), so a slower GPU gets less of both. Shares need not be
  equal and spans may be uneven (no padding: peer copies take any shape).
- **The text stream lives on the first GPU**, not split: it keeps the whole text (a few hundred tokens
  beside 4096..16k image tokens) and computes its projections and MLP, as one GPU does. The other
  GPUs get the text's Q/K/V of their heads with the image tokens and send the text's attention
  output back to the first GPU only; their own blocks run on an empty text and queue no text kernel
  (optim/execution/joint_attention.py, ``TransformerEngine._block_end``). Measured on two H200s:
  every GPU computing the whole text itself ran 0.222 s/step, the queuing thread being the limit
  (it queued a step in 0.213 s; the GPUs' kernels took 0.192 s), and the text is about half of a
  block's kernels; the text on the first GPU only, 0.2195 (the other GPUs then still called their
  text layers on the empty text; skipping those calls is not measured on GPUs yet).
- Image tokens are cut in order; the latents and the references are one image stream in the engine,
  so references are cut like the latents. RoPE tables and the 2511 modulation index are cut the same
  way; RoPE is applied per token before the exchange.
- Q, K and V travel stacked, so a block costs two exchanges. Their copies run on side streams
  (:class:`PeerCopies`): with PyTorch's own copies between GPUs both directions took turns (0.232 s/step
  against 0.222).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch


class PeerCopies:
    """The copies between GPUs of one exchange, run on side streams so both directions move at once.

    PyTorch's copy between two GPUs joins the current streams of both in a two-way barrier and runs on the
    source's stream: queued from one thread, the copy one way then waits for the copy the other way, and
    each GPU's compute waits for both. Here each GPU has a send and a receive stream: a copy r -> j runs on
    r's send stream once r's compute has produced the data, j's receive stream waits for it, and j's
    compute waits for its receive stream (:meth:`deliver`) only when it needs what arrived. Measured on two
    H200s: 0.232 -> 0.222 s/step; grouping the copies per GPU pair (one wait per sending GPU) measured 0.424,
    not understood, so each copy waits by itself. On the CPU (the tests' emulated GPUs) the copies are
    plain ``to``.
    """

    def __init__(self, devices: Sequence[torch.device]) -> None:
        self.devices = list(devices)
        cuda = all(d.type == "cuda" for d in self.devices) and len(set(self.devices)) == len(self.devices)
        self._send = [torch.cuda.Stream(d) for d in self.devices] if cuda else []
        self._recv = [torch.cuda.Stream(d) for d in self.devices] if cuda else []

    def copy(self, tensor: torch.Tensor, source: int, target: int) -> torch.Tensor:
        """``tensor`` (on GPU ``source``, produced by its compute stream) on GPU ``target``."""
        if source == target:
            return tensor
        if tensor.numel() == 0:  # the other GPUs' empty text: nothing to wait for
            return tensor.new_empty(tensor.shape, device=self.devices[target])
        if not self._send:
            return tensor.to(self.devices[target])
        send, recv = self._send[source], self._recv[target]
        tensor = tensor.contiguous()  # on the compute stream: the copy itself is one memcpy
        send.wait_stream(torch.cuda.current_stream(self.devices[source]))
        with torch.cuda.stream(send), torch.cuda.stream(recv):
            moved = tensor.to(self.devices[target], non_blocking=True)
        # Both are used on other streams than they were made on: the allocator must not reuse them early.
        tensor.record_stream(send)
        moved.record_stream(torch.cuda.current_stream(self.devices[target]))
        return moved

    def deliver(self) -> None:
        """Every GPU's compute waits for what it received."""
        for device, recv in zip(self.devices, self._recv, strict=False):
            torch.cuda.current_stream(device).wait_stream(recv)


def _bounds(shares: Sequence[int]) -> list[tuple[int, int]]:
    ends = list(accumulate(shares))
    return [(end - share, end) for share, end in zip(shares, ends, strict=True)]


def heads_for_ranks(
    images: Sequence[torch.Tensor],
    text: torch.Tensor,
    shares: Sequence[int],
    copies: PeerCopies,
) -> list[torch.Tensor]:
    """(each GPU's image tokens, all heads) -> (all tokens, each GPU's heads).

    ``images[r]`` [..., tokens of r, heads, dim] lives on ``copies.devices[r]``, ``text`` [..., text, heads,
    dim] on the first GPU. Returns, for GPU ``j``, on its device: [..., text + all image tokens, shares[j],
    dim], the text first (the single-GPU order)."""
    bounds = _bounds(shares)
    # Every copy is queued before any joining, so the copies of both directions run at once.
    arrived = [
        [copies.copy(text[..., first:last, :], 0, j)]
        + [copies.copy(image[..., first:last, :], r, j) for r, image in enumerate(images)]
        for j, (first, last) in enumerate(bounds)
    ]
    copies.deliver()
    return [torch.cat(parts, dim=-3) for parts in arrived]


def tokens_for_ranks(
    joints: Sequence[torch.Tensor],
    text_tokens: int,
    spans: Sequence[tuple[int, int]],
    copies: PeerCopies,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The inverse of :func:`heads_for_ranks` for the attention's output.

    ``joints[j]`` [..., text + all image tokens, heads of j, dim] on ``copies.devices[j]``. Returns, for GPU
    ``r``, on its device: (the text [..., text, heads, dim] on the first GPU, an empty text [..., 0, heads,
    dim] on the others, its image tokens ``spans[r]`` [..., tokens of r, heads, dim]), the head groups in
    GPU order (the single-GPU head order)."""
    arrived = [
        (
            [copies.copy(joint[..., : text_tokens if r == 0 else 0, :, :], j, r) for j, joint in enumerate(joints)],
            [
                copies.copy(joint[..., text_tokens + start : text_tokens + stop, :, :], j, r)
                for j, joint in enumerate(joints)
            ],
        )
        for r, (start, stop) in enumerate(spans)
    ]
    copies.deliver()
    return [(torch.cat(texts, dim=-2), torch.cat(images, dim=-2)) for texts, images in arrived]
