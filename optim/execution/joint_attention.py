"""The two ends of Qwen-Image's joint attention, as diffusers' ``QwenDoubleStreamAttnProcessor2_0`` computes
them: the per-stream Q/K/V projections, their norms and rotary embeddings before, the output projections after.
One copy for the engine's forward (optim/execution/transformer_engine.py) and for sequence parallelism
(optim/execution/sequence_parallel.py), which differ only in how the joint sequence is attended."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Projected = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def rotated_qkv(
    attn: Any,
    image: torch.Tensor,
    text: torch.Tensor,
    img_freqs: Any,
    txt_freqs: Any,
    rotary: Callable[..., torch.Tensor],
) -> Projected:
    """(image q, k, v, text q, k, v), each ``(batch, tokens, heads, head_dim)``, normed and rotated."""
    head_dim = attn.inner_dim // attn.heads

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, head_dim))

    iq, ik, iv = heads(attn.to_q(image)), heads(attn.to_k(image)), heads(attn.to_v(image))
    # Sequence parallelism's other GPUs run on an empty text (it lives on the first GPU): nothing to queue
    # for it, and the host that queues every GPU's kernels is what limits their step.
    text_given = bool(text.shape[-2])
    if text_given:
        tq, tk, tv = heads(attn.add_q_proj(text)), heads(attn.add_k_proj(text)), heads(attn.add_v_proj(text))
    if attn.norm_q is not None:
        iq = attn.norm_q(iq)
    if attn.norm_k is not None:
        ik = attn.norm_k(ik)
    if text_given and attn.norm_added_q is not None:
        tq = attn.norm_added_q(tq)
    if text_given and attn.norm_added_k is not None:
        tk = attn.norm_added_k(tk)
    iq, ik = rotary(iq, img_freqs, use_real=False), rotary(ik, img_freqs, use_real=False)
    if not text_given:
        tq = tk = tv = iq[..., :0, :, :]
    else:
        tq, tk = rotary(tq, txt_freqs, use_real=False), rotary(tk, txt_freqs, use_real=False)
    return iq, ik, iv, tq, tk, tv


def output_projections(
    attn: Any, img_joint: torch.Tensor, txt_joint: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attended image and text tokens (heads flattened) through their output projections."""
    img_attn = attn.to_out[0](img_joint.contiguous())
    if len(attn.to_out) > 1:
        img_attn = attn.to_out[1](img_attn)
    if not txt_joint.shape[-2]:  # an empty text (sequence parallelism's other GPUs): nothing to project
        return img_attn, txt_joint
    return img_attn, attn.to_add_out(txt_joint.contiguous())
