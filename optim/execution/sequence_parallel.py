"""Sequence parallelism for one forward (CFG off): the image tokens split over GPUs, Ulysses-style.

Without CFG there is one sample, so CFG-parallel has nothing to share; the image tokens are split
instead. Every rank runs every block (its weights resident or streamed through its own ring) on its
share of the tokens. Everything in a block is per token except attention, which needs every token:
before attention one all-to-all turns (local tokens, all heads) into (all tokens, local heads), each
rank attends with its heads over the whole joint sequence, and one all-to-all turns the result back.

Decisions (the GPU session builds on them):

- **Text tokens are replicated**, not split: every rank keeps the whole text stream (a few hundred
  tokens beside 4096..16k image tokens) and computes its projections and MLP itself. Its math is then
  the single-GPU math on every rank, and the text stream never has to be gathered before the next
  block. The text's attention output of head group ``r`` exists on rank ``r`` only, so it rides back
  to every rank inside the second all-to-all.
- **Image tokens are cut in order** into ``world`` equal shards of ``ceil(tokens / world)``; the last
  shard(s) are padded with zeros (the shape ``all_to_all_single`` wants: equal chunks). The joint
  sequence of the latents and the references is one image stream in the engine, so references are
  split like the latents. RoPE tables and the 2511 modulation index are split the same way; RoPE is
  applied per token before the exchange.
- **Padding never enters attention**: after the first exchange the padding is contiguous at the end
  of the gathered sequence, so it is cut off (exactly what a key mask would do, with no mask: every
  kernel, flash included, works), and put back as zeros before the return exchange.
- **Heads must divide by the rank count** (24 heads: 2, 3, 4, 6, 8, 12 or 24 ranks); anything else is
  refused naming the counts that work.
- Q, K and V travel in one exchange (stacked), so a block costs two all-to-alls.

The exchange is an abstract rank-local :data:`Exchange`: ``exchange(chunks)`` sends ``chunks[j]`` to
rank ``j`` and returns what every rank sent here, in rank order. :class:`EmulatedGroup` runs ranks
as threads of one process (the CPU tests); :func:`distributed_exchange` wraps torch.distributed's
``all_to_all_single`` (every chunk has the same shape, so one flat tensor carries them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ..errors import QwenFitError
from .attention_choice import Kernel
from .joint_attention import output_projections, rotated_qkv

# Rank-local all-to-all: ``chunks[j]`` goes to rank ``j``; returns the chunk each rank sent here, by rank.
Exchange = Callable[[list[torch.Tensor]], list[torch.Tensor]]
Result = TypeVar("Result")


@dataclass(frozen=True)
class TokenShards:
    """How ``tokens`` image tokens are cut into ``world`` equal shards (the last ones padded)."""

    tokens: int
    world: int

    def __post_init__(self) -> None:
        if self.world < 1 or self.tokens < 1:
            raise ValueError(f"TokenShards needs tokens >= 1 and world >= 1, got {self.tokens}, {self.world}")

    @property
    def shard(self) -> int:
        """Tokens per shard, padding included."""
        return -(-self.tokens // self.world)

    @property
    def padded(self) -> int:
        """Tokens of all shards together, padding included."""
        return self.shard * self.world

    @property
    def padding(self) -> int:
        return self.padded - self.tokens

    def span(self, rank: int) -> tuple[int, int]:
        """(start, stop) of the real tokens rank ``rank`` holds (stop - start may be 0)."""
        start = min(rank * self.shard, self.tokens)
        return start, min(start + self.shard, self.tokens)

    def real(self, rank: int) -> int:
        """Real (not padding) tokens on rank ``rank``."""
        start, stop = self.span(rank)
        return stop - start


def check_heads(heads: int, world: int) -> None:
    """Refuse a rank count that does not divide the attention heads, naming the counts that work."""
    if world < 1 or heads % world:
        works = ", ".join(str(n) for n in range(2, heads + 1) if heads % n == 0)
        raise QwenFitError(
            f"sequence parallelism splits the {heads} attention heads evenly over the GPUs: {world} GPUs cannot; "
            f"use {works} GPUs (or multi_gpu 'split')"
        )


def split_tokens(x: torch.Tensor, shards: TokenShards, dim: int = 1) -> list[torch.Tensor]:
    """``x`` cut along ``dim`` (``shards.tokens`` long) into ``shards.world`` pieces of ``shards.shard``,
    the padding zeros."""
    if x.shape[dim] != shards.tokens:
        raise ValueError(f"split_tokens: {x.shape[dim]} tokens along dim {dim}, the shards expect {shards.tokens}")
    if shards.padding:
        pad_shape = list(x.shape)
        pad_shape[dim] = shards.padding
        x = torch.cat([x, x.new_zeros(pad_shape)], dim=dim)
    return list(x.split(shards.shard, dim=dim))


def merge_tokens(parts: list[torch.Tensor], shards: TokenShards, dim: int = 1) -> torch.Tensor:
    """The inverse of :func:`split_tokens`: the shards joined in rank order, the padding dropped."""
    if len(parts) != shards.world:
        raise ValueError(f"merge_tokens: {len(parts)} shards, expected {shards.world}")
    return torch.cat(parts, dim=dim).narrow(dim, 0, shards.tokens)


def tokens_to_heads(
    image: torch.Tensor, text: torch.Tensor, shards: TokenShards, rank: int, exchange: Exchange
) -> torch.Tensor:
    """(local image tokens, all heads) -> (text + all image tokens, this rank's heads).

    ``image`` [..., shard, heads, dim] is this rank's padded shard, ``text`` [..., text, heads, dim]
    the whole (replicated) text stream. Returns [..., text + tokens, heads / world, dim] in the order
    the single-GPU attention uses (text first), the padding cut off.
    """
    world = shards.world
    check_heads(image.shape[-2], world)
    local = image.shape[-2] // world
    sent = [image[..., j * local : (j + 1) * local, :].contiguous() for j in range(world)]
    gathered = torch.cat(exchange(sent), dim=-3).narrow(-3, 0, shards.tokens)
    return torch.cat([text[..., rank * local : (rank + 1) * local, :], gathered], dim=-3)


def heads_to_tokens(
    joint: torch.Tensor, text_tokens: int, shards: TokenShards, exchange: Exchange
) -> tuple[torch.Tensor, torch.Tensor]:
    """(text + all image tokens, this rank's heads) -> (whole text, local image shard), all heads.

    ``joint`` [..., text + tokens, heads / world, dim]. Each rank sends rank ``j`` its image shard
    and the text (every rank needs the text's output of every head). Returns (text [..., text, heads,
    dim], image [..., shard, heads, dim]), the padding rows zeros.
    """
    text, image = joint.narrow(-3, 0, text_tokens), joint.narrow(-3, text_tokens, shards.tokens)
    if shards.padding:
        pad_shape = list(image.shape)
        pad_shape[-3] = shards.padding
        image = torch.cat([image, image.new_zeros(pad_shape)], dim=-3)
    sent = [torch.cat([text, piece], dim=-3).contiguous() for piece in image.split(shards.shard, dim=-3)]
    received = exchange(sent)
    whole = torch.cat(received, dim=-2)  # head groups in rank order: the single-GPU head order
    return whole.narrow(-3, 0, text_tokens), whole.narrow(-3, text_tokens, shards.shard)


class ShardedAttention:
    """The joint attention of one block on one rank: the engine's ``_attention`` (same signature and
    arithmetic per token), with the image stream this rank's padded shard.

    Projections, norms and RoPE run on the local tokens; Q, K and V cross in one exchange; the kernel
    (``attend``, the engine's) runs this rank's heads over the whole sequence; the output crosses back.
    """

    def __init__(
        self, shards: TokenShards, rank: int, exchange: Exchange, attend: Kernel, rotary: Callable[..., Any]
    ) -> None:
        self.shards, self.rank, self.exchange, self.attend, self.rotary = shards, rank, exchange, attend, rotary

    def __call__(self, attn, image, text, lengths, img_freqs, txt_freqs) -> tuple[torch.Tensor, torch.Tensor]:
        if len(lengths) != 1:
            raise QwenFitError("sequence parallelism runs one sample (CFG off); CFG runs use CFG-parallel or one GPU")
        iq, ik, iv, tq, tk, tv = rotated_qkv(attn, image, text, img_freqs, txt_freqs, self.rotary)
        joint = tokens_to_heads(
            torch.stack([iq, ik, iv]), torch.stack([tq, tk, tv]), self.shards, self.rank, self.exchange
        )
        out = self.attend(joint[0], joint[1], joint[2]).to(joint.dtype)
        txt_joint, img_joint = heads_to_tokens(out, lengths[0], self.shards, self.exchange)
        return output_projections(attn, img_joint.flatten(-2), txt_joint.flatten(-2))


class EmulatedGroup:
    """``world`` ranks as threads of this process, exchanging tensors through shared lists: the
    single-process stand-in for a process group (CPU tests, and debugging the GPU code on one GPU)."""

    def __init__(self, world: int, timeout_s: float = 60.0) -> None:
        self.world = world
        self._barrier = threading.Barrier(world, timeout=timeout_s)
        self._boxes: list[list[torch.Tensor | None]] = [[None] * world for _ in range(world)]

    def exchange(self, rank: int) -> Exchange:
        """Rank ``rank``'s all-to-all."""

        def all_to_all(chunks: list[torch.Tensor]) -> list[torch.Tensor]:
            if len(chunks) != self.world:
                raise ValueError(f"all_to_all: {len(chunks)} chunks for {self.world} ranks")
            for destination, chunk in enumerate(chunks):
                self._boxes[destination][rank] = chunk
            self._barrier.wait()
            received = list(self._boxes[rank])
            self._barrier.wait()  # nobody overwrites a box before every rank has read its own
            return received  # type: ignore[return-value]

        return all_to_all

    def run(self, work: Callable[[int, Exchange], Result]) -> list[Result]:
        """``work(rank, exchange)`` on every rank at once; the results by rank. A rank's exception
        aborts the others and is raised here."""
        results: list[Any] = [None] * self.world
        errors: list[BaseException] = []
        grad = torch.is_grad_enabled()  # grad mode is per thread: the ranks take the caller's
        inference = torch.is_inference_mode_enabled()

        def one(rank: int) -> None:
            try:
                with torch.set_grad_enabled(grad), torch.inference_mode(inference):
                    results[rank] = work(rank, self.exchange(rank))
            except BaseException as error:  # noqa: BLE001 - handed to the caller below
                errors.append(error)
                self._barrier.abort()

        threads = [threading.Thread(target=one, args=(rank,)) for rank in range(self.world)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            first = next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
            raise first
        return results


def distributed_exchange(group: Any = None) -> Exchange:
    """The all-to-all of a torch.distributed process group (NCCL on GPUs, gloo on the CPU): the
    chunks have one shape, so they travel stacked through ``all_to_all_single``."""
    import torch.distributed as dist

    def all_to_all(chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        sent = torch.stack(chunks)
        received = torch.empty_like(sent)
        dist.all_to_all_single(received, sent, group=group)
        return list(received.unbind(0))

    return all_to_all
