"""DINO's photometric view augmentations (train/photometric.py) and their place in the multi-crop views."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter, ImageOps

from silc_eval.core.errors import UserError
from silc_eval.train.augment import MultiViewTransform, ViewSpec, crop_box, sample_generator, to_normalized_tensor
from silc_eval.train.factory import view_spec
from silc_eval.train.photometric import PRESETS, Photometric, augment_view, photometric_from

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
OFF = Photometric(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=(0.0, 0.0, 0.0))


def noise_image(seed: int = 0, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_dino_preset_holds_the_paper_values():
    dino = PRESETS["dino"]
    assert (dino.flip_p, dino.jitter_p, dino.grayscale_p) == (0.5, 0.8, 0.2)
    assert (dino.brightness, dino.contrast, dino.saturation, dino.hue) == (0.4, 0.4, 0.2, 0.1)
    assert dino.blur_p == (1.0, 0.1, 0.5) and dino.blur_sigma == (0.1, 2.0)
    assert dino.solarize_p == (0.0, 0.2, 0.0)


def test_everything_off_returns_the_image_unchanged():
    image = noise_image()
    for slot in range(3):
        assert np.array_equal(pixels(augment_view(image, OFF, slot, torch.Generator().manual_seed(1))), pixels(image))


def test_each_operation_alone_matches_its_reference():
    image = noise_image(3)
    flipped = augment_view(image, replace(OFF, flip_p=1.0), 0, torch.Generator().manual_seed(0))
    assert np.array_equal(pixels(flipped), pixels(image)[:, ::-1])
    grey = augment_view(image, replace(OFF, grayscale_p=1.0), 0, torch.Generator().manual_seed(0))
    assert np.array_equal(pixels(grey), pixels(image.convert("L").convert("RGB")))
    # solarisation: PIL's own ImageOps at threshold 128, on the second global view only
    solarised = augment_view(image, replace(OFF, solarize_p=(0.0, 1.0, 0.0)), 1, torch.Generator().manual_seed(0))
    assert np.array_equal(pixels(solarised), pixels(ImageOps.solarize(image, 128)))
    for slot in (0, 2):
        untouched = augment_view(image, replace(OFF, solarize_p=(0.0, 1.0, 0.0)), slot, torch.Generator())
        assert np.array_equal(pixels(untouched), pixels(image))


def test_blur_sigma_is_scaled_to_the_view_size():
    image = noise_image(4, size=56)  # 56 / 224 = 1/4
    spec = replace(OFF, blur_p=(1.0, 1.0, 1.0), blur_sigma=(1.6, 1.6))
    blurred = augment_view(image, spec, 0, torch.Generator().manual_seed(0))
    assert np.array_equal(pixels(blurred), pixels(image.filter(ImageFilter.GaussianBlur(radius=0.4))))
    assert not np.array_equal(pixels(blurred), pixels(image.filter(ImageFilter.GaussianBlur(radius=1.6))))


def test_jitter_matches_torchvision_colorjitter_with_the_same_draws():
    """With jitter alone our draws (order, then the four factors) replayed through torchvision's ColorJitter
    parameters give the same image."""
    image = noise_image(5)
    spec = replace(OFF, jitter_p=1.0)
    generator = torch.Generator().manual_seed(11)
    ours = augment_view(image, spec, 0, generator)
    replay = torch.Generator().manual_seed(11)
    torch.rand(1, generator=replay)  # flip draw
    torch.rand(1, generator=replay)  # jitter draw
    order = torch.randperm(4, generator=replay)
    factors = [torch.rand(1, generator=replay).item() for _ in range(4)]
    b = 0.6 + 0.8 * factors[0]
    c = 0.6 + 0.8 * factors[1]
    s = 0.8 + 0.4 * factors[2]
    h = -0.1 + 0.2 * factors[3]
    jitter = T.ColorJitter(0.4, 0.4, 0.2, 0.1)
    jitter.get_params = lambda *args: (order, b, c, s, h)
    assert np.array_equal(pixels(ours), pixels(jitter(image)))
    assert not np.array_equal(pixels(ours), pixels(image))


def test_probabilities_are_respected_over_many_draws():
    image = noise_image(6)
    spec = replace(OFF, flip_p=0.3)
    flips = sum(np.array_equal(pixels(augment_view(image, spec, 0, torch.Generator().manual_seed(s))),
                               pixels(image)[:, ::-1]) for s in range(2000))
    assert 0.26 < flips / 2000 < 0.34


def test_views_are_deterministic_and_geometry_is_unchanged_by_the_photometric_draws():
    spec = ViewSpec(n_global=1, global_size=24, global_scale=(0.4, 1.0), photometric=replace(OFF, flip_p=1.0))
    image = noise_image(7, size=40)
    first = MultiViewTransform(spec, MEAN, STD)(image, sample_generator(0, 0, 3))
    again = MultiViewTransform(spec, MEAN, STD)(image, sample_generator(0, 0, 3))
    assert torch.equal(first[0], again[0])
    left, top, w, h = crop_box(40, 40, spec.global_scale, spec.ratio, sample_generator(0, 0, 3))
    crop = image.resize((24, 24), Image.BICUBIC, box=(left, top, left + w, top + h))
    assert torch.equal(first[0], to_normalized_tensor(crop, MEAN, STD).flip(-1))


def test_without_photometric_the_views_are_the_plain_crops():
    """Recipes without `photometric` draw exactly what they drew before it existed."""
    plain = ViewSpec(n_global=2, global_size=24, n_local=2, local_size=12)
    image = noise_image(8, size=40)
    views = MultiViewTransform(plain, MEAN, STD)(image, sample_generator(1, 2, 3))
    generator = sample_generator(1, 2, 3)
    for view, (size, scale) in zip(views, [(24, plain.global_scale)] * 2 + [(12, plain.local_scale)] * 2):
        left, top, w, h = crop_box(40, 40, scale, plain.ratio, generator)
        crop = image.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
        assert torch.equal(view, to_normalized_tensor(crop, MEAN, STD))


def test_recipe_entries_parse_to_the_preset_or_its_overrides():
    assert photometric_from(None) is None and photometric_from("none") is None
    assert photometric_from("dino") == PRESETS["dino"]
    changed = photometric_from({"preset": "dino", "solarize_p": [0, 0, 0], "hue": 0.0})
    assert changed.solarize_p == (0, 0, 0) and changed.hue == 0.0 and changed.flip_p == 0.5
    spec = view_spec({"n_global": 2, "photometric": "dino"}, 64, {})
    assert spec.photometric == PRESETS["dino"] and spec.global_size == 64
    assert view_spec({"n_global": 1}, 64, {}).photometric is None


@pytest.mark.parametrize("entry,message", [
    ("simclr", "unknown preset 'simclr'"),
    ({"flip": 0.5}, "unknown views.photometric parameter 'flip'"),
    (3, "must be none, a preset name or a mapping"),
    ({"flip_p": 1.5}, r"flip_p = 1.5: expected a probability in \[0, 1\]"),
    ({"blur_p": 0.5}, r"blur_p = 0.5: expected 3 probabilities"),
    ({"solarize_p": [0, 0.2]}, r"solarize_p = \(0, 0.2\): expected 3 probabilities"),
    ({"hue": 0.7}, r"hue = 0.7: expected a strength in \[0, 0.5\]"),
    ({"contrast": -0.1}, r"contrast = -0.1: expected a strength"),
    ({"blur_sigma": [2.0, 0.1]}, r"blur_sigma = \(2.0, 0.1\): expected \[low, high\]"),
])
def test_bad_recipe_entries_are_one_clear_error(entry, message):
    with pytest.raises(UserError, match=message):
        photometric_from(entry)
