"""Positional embeddings off the training grid: dense inference follows the SCLIP family's reference arithmetic
(DINO's scale factor (g + 0.1) / old, bicubic), training at other crop sizes interpolates by size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from silc_eval.models.vit import interpolate_pos_embed


def reference_positions(pos_embed: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """The reference code's interpolation, written from its description: class position kept, the patch positions
    reshaped to sqrt(N) x sqrt(N) and resized bicubically by scale factors (h // patch + 0.1) / sqrt(N) and
    (w // patch + 0.1) / sqrt(N), only when the token count differs."""
    count = pos_embed.shape[0] - 1
    side = int(math.sqrt(count))
    if (height // patch) * (width // patch) == count:
        return pos_embed
    rows, cols = height // patch + 0.1, width // patch + 0.1
    grid = pos_embed[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, scale_factor=(rows / side, cols / side), mode="bicubic")
    return torch.cat([pos_embed[:1], out.permute(0, 2, 3, 1).reshape(-1, pos_embed.shape[-1])])


@pytest.mark.parametrize("height, width", [(48, 64), (112, 80), (24, 24), (64, 64)])
def test_dense_positions_equal_the_reference_arithmetic(height, width):
    torch.manual_seed(0)
    pos = torch.randn(1 + 8 * 8, 16)
    grid = (height // 8, width // 8)
    ours = interpolate_pos_embed(pos, (8, 8), grid, sclip_scale=True)
    assert ours.shape == (1 + grid[0] * grid[1], 16)
    assert torch.allclose(ours, reference_positions(pos, height, width, 8), atol=1e-6)


def test_the_reference_factor_differs_from_interpolating_by_size_and_training_keeps_size():
    torch.manual_seed(1)
    pos = torch.randn(1 + 8 * 8, 16)
    by_size = interpolate_pos_embed(pos, (8, 8), (6, 10))
    sclip = interpolate_pos_embed(pos, (8, 8), (6, 10), sclip_scale=True)
    expected_size = F.interpolate(pos[1:].reshape(1, 8, 8, 16).permute(0, 3, 1, 2), size=(6, 10), mode="bicubic")
    assert torch.allclose(by_size[1:], expected_size.permute(0, 2, 3, 1).reshape(-1, 16), atol=1e-6)
    assert (sclip - by_size).abs().max() > 1e-3  # a real difference, which the reference's numbers carry
    assert torch.equal(interpolate_pos_embed(pos, (8, 8), (8, 8), sclip_scale=True), pos)  # on the grid: untouched


def test_no_class_token_positions_interpolate_too():
    torch.manual_seed(2)
    pos = torch.randn(4 * 4, 8)
    out = interpolate_pos_embed(pos, (4, 4), (3, 5), class_token=False, sclip_scale=True)
    grid = pos.reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(3.1 / 4, 5.1 / 4), mode="bicubic").permute(0, 2, 3, 1)
    assert torch.allclose(out, expected.reshape(-1, 8), atol=1e-6)
