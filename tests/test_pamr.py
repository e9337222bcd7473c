"""PAMR (pixel-adaptive mask refinement) against a per-pixel reference written from its definition, and what it
does: borders of a noisy mask move onto the image's edges; a uniform image averages the neighbourhood."""

from __future__ import annotations

import itertools

import pytest
import torch

from silc_eval.machinery.pamr import pamr_affinity, pamr_refine


def reference_pamr(image: torch.Tensor, logits: torch.Tensor, steps: int, dilations) -> torch.Tensor:
    """PAMR for one image, pixel by pixel: replicated borders as clamped coordinates, the 3x3 neighbourhood
    (centre included, once per dilation) for the unbiased standard deviation, the 8 neighbours for the weights."""
    _, height, width = image.shape
    ring = [(dy, dx) for dy, dx in itertools.product((-1, 0, 1), repeat=2) if (dy, dx) != (0, 0)]

    def at(tensor, y, x):
        return tensor[:, min(max(y, 0), height - 1), min(max(x, 0), width - 1)]

    weights = {}
    for y, x in itertools.product(range(height), range(width)):
        every = torch.stack([at(image, y + dy * d, x + dx * d) for d in dilations
                             for dy, dx in itertools.product((-1, 0, 1), repeat=2)])  # (9 * nd, 3)
        spread = every.std(dim=0)
        scores = torch.stack([(-(at(image, y + dy * d, x + dx * d) - image[:, y, x]).abs() / (1e-8 + 0.1 * spread))
                              .mean() for d in dilations for dy, dx in ring])
        weights[y, x] = torch.softmax(scores, dim=0)
    refined = logits.clone()
    for _ in range(steps):
        previous = refined.clone()
        for y, x in itertools.product(range(height), range(width)):
            neighbours = torch.stack([at(previous, y + dy * d, x + dx * d) for d in dilations for dy, dx in ring])
            refined[:, y, x] = (weights[y, x][:, None] * neighbours).sum(0)
    return refined


@pytest.mark.parametrize("dilations", [(1,), (1, 2), (2, 3)])
def test_pamr_equals_the_per_pixel_reference(dilations):
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(3, 7, 9, generator=generator, dtype=torch.float64)
    logits = torch.randn(4, 7, 9, generator=generator, dtype=torch.float64)
    ours = pamr_refine(image[None], logits[None], steps=3, dilations=dilations)[0]
    assert torch.allclose(ours, reference_pamr(image, logits, 3, dilations), atol=1e-10)


def test_affinities_are_a_distribution_over_the_neighbours():
    image = torch.rand(2, 3, 10, 12)
    weights = pamr_affinity(image, (1, 4))
    assert weights.shape == (2, 1, 16, 10, 12) and torch.allclose(weights.sum(2), torch.ones(2, 1, 10, 12))


def test_a_noisy_border_moves_onto_the_image_edge():
    image = torch.zeros(1, 3, 16, 16)
    image[..., 8:] = 1.0  # left half dark, right half bright
    logits = torch.zeros(1, 2, 16, 16)
    logits[:, 1, :, 6:] = 1.0  # the predicted border is two columns too far left
    logits[:, 0, :, :6] = 1.0
    refined = pamr_refine(image, logits, steps=10, dilations=(1, 2))
    labels = refined.argmax(1)[0]
    assert (labels[:, :8] == 0).float().mean() > (logits.argmax(1)[0][:, :8] == 0).float().mean()
    assert (labels[:, 9:] == 1).all()


def test_without_steps_nothing_changes_and_sizes_must_agree():
    logits = torch.randn(1, 3, 5, 6)
    assert torch.equal(pamr_refine(torch.rand(1, 3, 5, 6), logits, 0, (1,)), logits)
    with pytest.raises(ValueError, match="image at the logits' size"):
        pamr_refine(torch.rand(1, 3, 4, 6), logits, 2, (1,))
