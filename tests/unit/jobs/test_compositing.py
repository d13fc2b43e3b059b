"""The preview's compositing arithmetic: layers stacked bottom first, 'over' with straight alpha."""

from __future__ import annotations

import torch

from optim.jobs.compositing import checkerboard, checkerboard_composite


def test_opaque_top_layer_hides_everything_below():
    rgb = torch.stack([torch.full((4, 4, 3), 0.2), torch.full((4, 4, 3), 0.8)])
    alpha = torch.stack([torch.ones(4, 4), torch.ones(4, 4)])
    assert torch.allclose(checkerboard_composite(rgb, alpha)[0], torch.full((4, 4, 3), 0.8))


def test_half_transparent_layer_blends_over_the_one_below():
    rgb = torch.stack([torch.full((2, 2, 3), 1.0), torch.full((2, 2, 3), 0.0)])
    alpha = torch.stack([torch.ones(2, 2), torch.full((2, 2), 0.25)])
    assert torch.allclose(checkerboard_composite(rgb, alpha)[0], torch.full((2, 2, 3), 0.75))


def test_transparent_layers_show_the_checkerboard():
    rgb = torch.rand(3, 32, 32, 3)
    alpha = torch.zeros(3, 32, 32)
    assert torch.equal(checkerboard_composite(rgb, alpha)[0], checkerboard(32, 32))


def test_layers_that_split_a_picture_recompose_it():
    picture = torch.rand(8, 8, 3)
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    rgb = torch.stack([picture, picture])  # bottom: left half opaque; top: right half opaque
    alpha = torch.stack([left, 1 - left])
    assert torch.allclose(checkerboard_composite(rgb, alpha)[0], picture)
