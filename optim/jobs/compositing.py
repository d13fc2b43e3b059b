"""A picture of layers stacked over a checkerboard, as image editors show transparency."""

from __future__ import annotations

import torch

_SQUARE = 16


def checkerboard(height: int, width: int) -> torch.Tensor:
    """A light/dark grey [H,W,3] checkerboard."""
    ys = torch.arange(height).div(_SQUARE, rounding_mode="floor")
    xs = torch.arange(width).div(_SQUARE, rounding_mode="floor")
    dark = ((ys[:, None] + xs[None, :]) % 2).bool()
    board = torch.full((height, width, 3), 0.9)
    board[dark] = 0.7
    return board


def checkerboard_composite(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Stack layers [N,H,W,3] with alpha [N,H,W] (1 = opaque), first at the bottom; returns [1,H,W,3]."""
    out = checkerboard(rgb.shape[1], rgb.shape[2])
    for layer, a in zip(rgb, alpha, strict=True):
        a = a[..., None]
        out = layer * a + out * (1 - a)
    return out[None].clamp(0, 1)
