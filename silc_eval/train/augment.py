"""Per-sample, seeded image views: one or more global crops and optional local crops (multi-crop),
each optionally given DINO's photometric augmentations (train/photometric.py).

Every sample draws its crops from its own generator, seeded by (seed, epoch, position in
the epoch's stream). The views of a sample are therefore the same whether it is trained
on one process or sliced to one rank of many, and after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from silc_eval.train.photometric import Photometric, augment_view


@dataclass(frozen=True)
class ViewSpec:
    """How many crops of which size and area fraction; global crops come first in the view list."""

    n_global: int = 1
    global_size: int = 64
    global_scale: tuple[float, float] = (0.9, 1.0)
    n_local: int = 0
    local_size: int = 32
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    photometric: Photometric | None = None

    @property
    def n_views(self) -> int:
        """Return the number of views per image."""
        return self.n_global + self.n_local


def sample_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """Return the generator of one sample's random choices."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_000_007 + position)


def crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
             generator: torch.Generator) -> tuple[int, int, int, int]:
    """Return (left, top, crop_width, crop_height) of a random crop with area fraction in scale and aspect in ratio.

    Up to ten tries at a box that fits; otherwise the central crop with the aspect clamped to ratio.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=generator).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def to_normalized_tensor(image: Image.Image, mean, std) -> torch.Tensor:
    """Return a (3, H, W) float tensor of an RGB image, scaled to [0, 1] then normalised."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    return (array - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class MultiViewTransform:
    """Turns one PIL image into its list of normalised view tensors (globals, then locals)."""

    def __init__(self, spec: ViewSpec, mean, std):
        self.spec, self.mean, self.std = spec, tuple(mean), tuple(std)

    def _view(self, image: Image.Image, size: int, scale, slot: int, generator: torch.Generator) -> torch.Tensor:
        left, top, w, h = crop_box(image.width, image.height, scale, self.spec.ratio, generator)
        crop = image.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
        if self.spec.photometric is not None:
            crop = augment_view(crop, self.spec.photometric, slot, generator)
        return to_normalized_tensor(crop, self.mean, self.std)

    def __call__(self, image: Image.Image, generator: torch.Generator) -> list[torch.Tensor]:
        image = image.convert("RGB")
        spec = self.spec
        views = [self._view(image, spec.global_size, spec.global_scale, min(i, 1), generator)
                 for i in range(spec.n_global)]
        views += [self._view(image, spec.local_size, spec.local_scale, 2, generator) for _ in range(spec.n_local)]
        return views
