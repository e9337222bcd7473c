"""The reference pipelines' image resize (mmcv's Resize with keep_ratio: rescale_size, then OpenCV INTER_LINEAR on
the uint8 image) against mmcv itself, and how far the float resize (resize: torch) is from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from silc_eval.machinery.windows import LONG_SIDE_CAP, prepare_image

mmcv_image = pytest.importorskip("mmcv.image")


def unnormalised(image: torch.Tensor, short_side: int, resize: str) -> np.ndarray:
    """Return prepare_image's output with mean 0 and std 1/255: the resized pixels in grey levels (H, W, 3)."""
    zero, scale = torch.zeros(3, 1, 1), torch.full((3, 1, 1), 1 / 255)
    return prepare_image(image, short_side, zero, scale, resize).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("height, width, short_side", [(375, 500, 336), (333, 500, 448), (96, 128, 64), (50, 40, 77)])
def test_mmcv_resize_equals_mmcv_imrescale_to_the_grey_level(height, width, short_side):
    rng = np.random.default_rng(height)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = mmcv_image.imrescale(array, (LONG_SIDE_CAP, short_side), interpolation="bilinear")
    ours = unnormalised(torch.from_numpy(array).permute(2, 0, 1), short_side, "mmcv")
    assert ours.shape == expected.shape
    assert np.array_equal(np.rint(ours).astype(np.uint8), expected)
    assert np.abs(ours - np.rint(ours)).max() < 1e-3  # whole grey levels: the uint8 image was resized
    # the float resize is the same geometry, a fraction of a grey level apart, never rounded
    float_resized = unnormalised(torch.from_numpy(array).permute(2, 0, 1), short_side, "torch")
    assert float_resized.shape == expected.shape
    assert 0 < np.abs(float_resized - expected).max() <= 2.0


def test_an_image_at_the_target_size_is_not_resized_either_way():
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    assert np.array_equal(unnormalised(image, 64, "mmcv"), unnormalised(image, 64, "torch"))


def test_an_unknown_resize_is_refused():
    with pytest.raises(ValueError, match="resize must be one of"):
        prepare_image(torch.zeros(3, 8, 8, dtype=torch.uint8), 4, torch.zeros(3, 1, 1), torch.ones(3, 1, 1), "pil")
