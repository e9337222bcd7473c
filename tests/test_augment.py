"""Crop geometry, determinism, view order and normalisation of the multi-crop augmentation (train/augment.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from silc_eval.train.augment import MultiViewTransform, ViewSpec, crop_box, sample_generator, to_normalized_tensor

RATIO = (3 / 4, 4 / 3)


def fallback_box(width: int, height: int, ratio) -> tuple[int, int, int, int]:
    """The central crop crop_box documents as its fallback, worked out independently for the sizes used here."""
    if width / height < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def within_scale(w: int, h: int, area: int, scale) -> bool:
    """Whether some unrounded (w0, h0) with |w0 - w| <= 0.5, |h0 - h| <= 0.5 has w0 * h0 / area in scale."""
    return (w - 0.5) * (h - 0.5) <= scale[1] * area + 1e-9 and (w + 0.5) * (h + 0.5) >= scale[0] * area - 1e-9


def within_ratio(w: int, h: int, ratio) -> bool:
    """Whether some unrounded (w0, h0) within 0.5 of (w, h) has w0 / h0 in ratio."""
    return (w - 0.5) / (h + 0.5) <= ratio[1] + 1e-9 and (w + 0.5) / (h - 0.5) >= ratio[0] - 1e-9


@pytest.mark.parametrize("width,height,scale", [(64, 64, (0.4, 1.0)), (64, 64, (0.05, 0.4)), (80, 48, (0.08, 1.0)),
                                                (37, 53, (0.2, 0.6)), (200, 30, (0.05, 0.3))])
def test_random_crops_respect_scale_and_ratio(width, height, scale):
    area = width * height
    fallback = fallback_box(width, height, RATIO)
    checked = 0
    for seed in range(400):
        left, top, w, h = crop_box(width, height, scale, RATIO, torch.Generator().manual_seed(seed))
        assert 0 < w <= width and 0 < h <= height
        assert 0 <= left <= width - w and 0 <= top <= height - h
        if (left, top, w, h) == fallback:
            continue  # possibly the fallback, which ignores scale by design
        checked += 1
        assert within_scale(w, h, area, scale), (seed, w, h, w * h / area)
        assert within_ratio(w, h, RATIO), (seed, w, h, w / h)
    assert checked >= 350  # the fallback is rare for these feasible settings, so the bounds were really exercised


def test_slack_bounds_are_tight_enough_to_catch_a_wrong_crop():
    # The helpers accept only rounding slack: a box a quarter too large or too elongated is rejected.
    assert within_scale(40, 40, 64 * 64, (0.0, 0.4))
    assert not within_scale(46, 46, 64 * 64, (0.0, 0.4))
    assert within_ratio(40, 30, RATIO)
    assert not within_ratio(40, 24, RATIO)


def test_crops_cover_the_scale_range():
    # Not stuck at one size: over many draws the area fractions spread across (0.05, 0.4).
    fractions = [np.prod(crop_box(64, 64, (0.05, 0.4), RATIO, torch.Generator().manual_seed(s))[2:]) / 64 ** 2
                 for s in range(300)]
    assert min(fractions) < 0.1 and max(fractions) > 0.33


@pytest.mark.parametrize("width,height,expected", [
    (64, 64, (0, 0, 64, 64)),      # aspect inside the range: the whole image
    (100, 40, (23, 0, 53, 40)),    # too wide: width clamped to 40 * 4/3 = 53.3 -> 53, centred
    (40, 100, (0, 23, 40, 53)),    # too tall: height clamped to 40 / (3/4) = 53.3 -> 53, centred
    (41, 41, (0, 0, 41, 41)),
])
def test_impossible_scale_falls_back_to_a_centred_crop(width, height, expected):
    for seed in range(5):
        box = crop_box(width, height, (2.0, 3.0), RATIO, torch.Generator().manual_seed(seed))
        assert box == expected
        left, top, w, h = box
        assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
        assert abs((left + w / 2) - width / 2) <= 0.5 and abs((top + h / 2) - height / 2) <= 0.5
        assert within_ratio(w, h, RATIO)


def noise_image(width: int = 48, height: int = 40, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


SPEC = ViewSpec(n_global=2, global_size=24, global_scale=(0.4, 1.0), n_local=3, local_size=12,
                local_scale=(0.05, 0.4))
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def test_views_are_deterministic_per_seed_and_differ_across_seeds():
    transform = MultiViewTransform(SPEC, MEAN, STD)
    image = noise_image()
    first = transform(image, sample_generator(0, 0, 5))
    again = transform(image, sample_generator(0, 0, 5))
    other = transform(image, sample_generator(0, 0, 6))
    assert len(first) == len(again) == len(other) == SPEC.n_views
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert sum(not torch.equal(a, b) for a, b in zip(first, other)) >= SPEC.n_views - 1


def test_view_shapes_and_order_globals_first():
    transform = MultiViewTransform(SPEC, MEAN, STD)
    image = noise_image()
    views = transform(image, sample_generator(3, 1, 7))
    assert [tuple(v.shape) for v in views] == [(3, 24, 24)] * 2 + [(3, 12, 12)] * 3
    assert all(v.dtype == torch.float32 for v in views)
    # Replaying the same generator through crop_box: the first n_global boxes use global_scale at global_size,
    # the rest local_scale at local_size, in that order.
    generator = sample_generator(3, 1, 7)
    boxes = [crop_box(48, 40, SPEC.global_scale, SPEC.ratio, generator) for _ in range(SPEC.n_global)]
    boxes += [crop_box(48, 40, SPEC.local_scale, SPEC.ratio, generator) for _ in range(SPEC.n_local)]
    sizes = [SPEC.global_size] * SPEC.n_global + [SPEC.local_size] * SPEC.n_local
    for view, (left, top, w, h), size in zip(views, boxes, sizes):
        crop = image.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
        assert torch.equal(view, to_normalized_tensor(crop, MEAN, STD))
    for _, _, w, h in boxes[SPEC.n_global:]:
        assert within_scale(w, h, 48 * 40, SPEC.local_scale)


def test_transform_converts_to_rgb():
    grey = noise_image().convert("L")
    views = MultiViewTransform(SPEC, MEAN, STD)(grey, sample_generator(0, 0, 0))
    assert all(v.shape[0] == 3 for v in views)
    # A grey image becomes three equal channels: undoing each channel's normalisation gives the same pixels.
    pixels = [views[0][c] * STD[c] + MEAN[c] for c in range(3)]
    assert torch.allclose(pixels[0], pixels[1], atol=1e-6) and torch.allclose(pixels[0], pixels[2], atol=1e-6)
    assert pixels[0].std() > 0.05  # not a constant image, so the comparison means something


def test_normalisation_of_a_constant_colour_image_is_exact():
    colour = (200, 100, 50)
    image = Image.new("RGB", (48, 40), colour)
    views = MultiViewTransform(SPEC, MEAN, STD)(image, sample_generator(0, 0, 0))
    for view in views:
        for channel in range(3):
            x = torch.tensor(float(colour[channel])) / 255.0
            expected = (x - torch.tensor(MEAN[channel])) / torch.tensor(STD[channel])
            assert view[channel, 5, 7].item() == expected.item()  # float32, exactly
            assert torch.all(view[channel] == expected)
            assert math.isclose(view[channel, 0, 0].item(), (colour[channel] / 255 - MEAN[channel]) / STD[channel],
                                abs_tol=1e-6)


def random_numbers(generator: torch.Generator) -> torch.Tensor:
    return torch.rand(8, generator=generator)


def test_sample_generator_depends_on_every_argument():
    base = random_numbers(sample_generator(1, 2, 3))
    assert torch.equal(base, random_numbers(sample_generator(1, 2, 3)))
    for other in [(2, 2, 3), (1, 3, 3), (1, 2, 4), (0, 2, 3), (1, 0, 3), (1, 2, 0)]:
        assert not torch.equal(base, random_numbers(sample_generator(*other))), other
    # Neighbouring (epoch, position) pairs do not alias each other.
    seen = {tuple(random_numbers(sample_generator(0, e, p)).tolist()) for e in range(5) for p in range(50)}
    assert len(seen) == 250
