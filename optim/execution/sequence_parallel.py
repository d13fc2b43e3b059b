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
- Q, K and V travel stacked, so a block costs two exchanges.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch


def _bounds(shares: Sequence[int]) -> list[tuple[int, int]]:
    ends = list(accumulate(shares))
    return [(end - share, end) for share, end in zip(shares, ends, strict=True)]


def heads_for_ranks(
    images: Sequence[torch.Tensor],
    texts: Sequence[torch.Tensor],
    shares: Sequence[int],
    devices: Sequence[torch.device],
) -> list[torch.Tensor]:
    """(each GPU's image tokens, all heads) -> (all tokens, each GPU's heads).

    ``images[r]`` [..., tokens of r, heads, dim] and ``texts[r]`` [..., text, heads, dim] live on
    ``devices[r]`` (the text is the same on every GPU). Returns, for GPU ``j``, on ``devices[j]``:
    [..., text + all image tokens, shares[j], dim], the text first (the single-GPU order)."""
    joints = []
    for j, (first, last) in enumerate(_bounds(shares)):
        parts = [texts[j][..., first:last, :]]
        parts += [image[..., first:last, :].to(devices[j], non_blocking=True) for image in images]
        joints.append(torch.cat(parts, dim=-3))
    return joints


def tokens_for_ranks(
    joints: Sequence[torch.Tensor],
    text_tokens: int,
    spans: Sequence[tuple[int, int]],
    devices: Sequence[torch.device],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The inverse of :func:`heads_for_ranks` for the attention's output.

    ``joints[j]`` [..., text + all image tokens, heads of j, dim] on ``devices[j]``. Returns, for GPU
    ``r``, on ``devices[r]``: (the whole text [..., text, heads, dim], its image tokens ``spans[r]``
    [..., tokens of r, heads, dim]), the head groups in GPU order (the single-GPU head order)."""
    back = []
    for device, (start, stop) in zip(devices, spans, strict=True):
        text = [joint[..., :text_tokens, :, :].to(device, non_blocking=True) for joint in joints]
        image = [
            joint[..., text_tokens + start : text_tokens + stop, :, :].to(device, non_blocking=True) for joint in joints
        ]
        back.append((torch.cat(text, dim=-2), torch.cat(image, dim=-2)))
    return back
