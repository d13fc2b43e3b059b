"""One GPU's half-blocks of a sequence-parallel forward captured as CUDA graphs and replayed.

Why: with the image tokens cut over two H200s a GPU runs half a block in about as long as one Python
thread takes to queue its ~80 kernels, so the thread queuing every GPU's kernels became the limit
(measured: the host took 0.213 s to queue a step the GPUs computed in 0.192 s of kernels). A graph is
queued with one call. The kernels are the ones an eager run queues, captured once, so the results are
the eager results bit for bit.

Per block two graphs (before the exchange of heads and after the exchange back), over fixed buffers: the
block's streams, its modulation rows and the RoPE tables go in by copies, Q/K/V and what the second half
needs come out in buffers, and the second half writes the streams back in place. All graphs of a GPU
share one memory pool (replayed in the order they were captured, as the pool requires), so the
intermediates of one half-block are all they hold beside the buffers.

Only for blocks resident on the GPU (their weights' addresses are fixed) and the eager block functions;
the caller keys the graphs by everything that changes them (shapes, weights placed, LoRA stack,
arithmetic) and drops them when any changes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

BeginHalf = Callable[[int, dict[str, Any]], tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]
EndHalf = Callable[[int, dict[str, Any], tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor], tuple]


class HalfBlockGraphs:
    """Every block of one GPU as two captured graphs over fixed buffers.

    ``begin(i, inputs)`` -> (image q, k, v, text q, k, v), kept; ``end(i, inputs, kept, img_joint, txt_joint)``
    -> (image, text): the engine's halves of block ``i`` on the tensors named in ``inputs`` (image, text,
    img_mod, txt_mod, img_freqs, txt_freqs, index). ``bound(i)`` binds this GPU's weights of block ``i``.
    ``inputs`` are this GPU's first-block values; they are copied, not kept."""

    def __init__(
        self,
        device: torch.device,
        blocks: int,
        begin: BeginHalf,
        end: EndHalf,
        bound: Callable[[int], AbstractContextManager],
        inputs: dict[str, torch.Tensor | None],
    ) -> None:
        self.device = device
        self.inputs = {name: None if t is None else t.clone() for name, t in inputs.items()}
        self._begin, self._end = begin, end
        side = torch.cuda.Stream(device)
        compute = torch.cuda.current_stream(device)
        side.wait_stream(compute)
        # One eager pass of block 0 on the capture stream first: lazy library set-up happens outside any
        # capture, and its outputs give the buffers' shapes.
        with torch.cuda.device(device), torch.cuda.stream(side), bound(0):
            qkv, kept = begin(0, self.inputs)
        compute.wait_stream(side)
        self.qkv_img = torch.empty((3, *qkv[0].shape), dtype=qkv[0].dtype, device=device)
        self.qkv_txt = torch.empty((3, *qkv[3].shape), dtype=qkv[3].dtype, device=device)
        self.kept = tuple(torch.empty_like(k) for k in kept)
        self.img_joint = torch.empty_like(qkv[0])
        self.txt_joint = torch.empty_like(qkv[3])
        del qkv, kept
        side.wait_stream(compute)
        self._graphs: list[tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph]] = []
        with torch.cuda.device(device), torch.cuda.stream(side):
            with bound(0):
                end(0, self.inputs, self.kept, self.img_joint.flatten(-2), self.txt_joint.flatten(-2))
            pool = torch.cuda.graph_pool_handle()
            for i in range(blocks):
                with bound(i):
                    self._graphs.append(
                        (self._capture(pool, i, self._begin_body), self._capture(pool, i, self._end_body))
                    )
        compute.wait_stream(side)

    @staticmethod
    def _capture(pool: Any, block: int, body: Callable[[int], None]) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        graph.capture_begin(pool=pool)
        try:
            body(block)
        finally:
            graph.capture_end()
        return graph

    def _begin_body(self, block: int) -> None:
        qkv, kept = self._begin(block, self.inputs)
        torch.stack(qkv[:3], out=self.qkv_img)
        torch.stack(qkv[3:], out=self.qkv_txt)
        for buffer, value in zip(self.kept, kept, strict=True):
            buffer.copy_(value)

    def _end_body(self, block: int) -> None:
        image, text = self._end(block, self.inputs, self.kept, self.img_joint.flatten(-2), self.txt_joint.flatten(-2))
        self.inputs["image"].copy_(image)
        self.inputs["text"].copy_(text)

    def load(self, **tensors: torch.Tensor | None) -> None:
        """Copy this run's values into the input buffers (queued on this GPU's compute stream)."""
        for name, tensor in tensors.items():
            if tensor is not None:
                self.inputs[name].copy_(tensor)

    def begin(self, block: int, img_mod: torch.Tensor, txt_mod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``block`` up to attention on the image and text buffers: (stacked image Q/K/V, text Q/K/V)."""
        self.load(img_mod=img_mod, txt_mod=txt_mod)
        with torch.cuda.device(self.device):
            self._graphs[block][0].replay()
        return self.qkv_img, self.qkv_txt

    def end(self, block: int, img_joint: torch.Tensor, txt_joint: torch.Tensor) -> None:
        """Block ``block`` from the attended tokens on; the image and text buffers then hold its output."""
        self.img_joint.copy_(img_joint)
        self.txt_joint.copy_(txt_joint)
        with torch.cuda.device(self.device):
            self._graphs[block][1].replay()

    @property
    def image(self) -> torch.Tensor:
        return self.inputs["image"]
