"""DINO's photometric view augmentations, drawn from a view's own seeded generator.

Caron et al. 2021 (DINO), Appendix and its `DataAugmentationDINO`: every view is flipped
horizontally with p 0.5, colour-jittered with p 0.8 (brightness 0.4, contrast 0.4,
saturation 0.2, hue 0.1, the four in random order) and turned grey with p 0.2; Gaussian
blur with sigma in [0.1, 2.0] follows with p 1.0 on the first global view, 0.1 on the
other global views and 0.5 on local views; the second global view is solarised (threshold
128) with p 0.2. The blur's sigma is for 224 px views: here it is scaled by the view's
size / 224, so a blur covers the same fraction of the view.

The image operations are torchvision's (`torchvision.transforms.functional`, on PIL
images) and, for the blur, PIL's `ImageFilter.GaussianBlur` as in DINO; only the random
draws are ours, so that a sample's views stay a function of its generator (train/augment.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter

from silc_eval.core.errors import UserError

REFERENCE_SIZE = 224


@dataclass(frozen=True)
class Photometric:
    """Probabilities and strengths of the photometric augmentations (defaults: DINO's, paper-stated).

    `blur_p` and `solarize_p` are (first global view, other global views, local views).
    """

    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: tuple[float, float, float] = (0.0, 0.2, 0.0)


PRESETS = {"dino": Photometric()}


def photometric_from(value: Any) -> Photometric | None:
    """Return the Photometric of a recipe's `views.photometric` entry: None/'none', a preset name, or a
    mapping {preset: name (default dino), <field>: value, ...}; raises UserError on anything else."""
    if value is None or value == "none":
        return None
    if isinstance(value, str):
        if value not in PRESETS:
            raise UserError(f"views.photometric: unknown preset '{value}'; expected none or one of "
                            f"{', '.join(PRESETS)}")
        return PRESETS[value]
    if not isinstance(value, dict):
        raise UserError(f"views.photometric must be none, a preset name or a mapping, not {value!r}")
    values = dict(value)
    base = photometric_from(values.pop("preset", "dino"))
    names = {f.name for f in fields(Photometric)}
    unknown = set(values) - names
    if unknown:
        raise UserError(f"unknown views.photometric parameter '{sorted(unknown)[0]}'; allowed: preset, "
                        f"{', '.join(sorted(names))}")
    for key, item in values.items():
        values[key] = tuple(item) if isinstance(item, list) else item
    return _checked(Photometric(**{**asdict(base), **values}))


def _checked(spec: Photometric) -> Photometric:
    """Return spec, or raise UserError naming the first value out of its range."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def fail(name: str, expected: str):
        raise UserError(f"views.photometric.{name} = {getattr(spec, name)!r}: expected {expected}")

    for name in ("flip_p", "jitter_p", "grayscale_p"):
        if not (number(getattr(spec, name)) and 0 <= getattr(spec, name) <= 1):
            fail(name, "a probability in [0, 1]")
    for name in ("blur_p", "solarize_p"):
        value = getattr(spec, name)
        if not (isinstance(value, tuple) and len(value) == 3 and all(number(v) and 0 <= v <= 1 for v in value)):
            fail(name, "3 probabilities in [0, 1] (first global view, other global views, local views)")
    for name in ("brightness", "contrast", "saturation"):
        if not (number(getattr(spec, name)) and getattr(spec, name) >= 0):
            fail(name, "a strength >= 0 (factors drawn from [max(0, 1 - s), 1 + s], as torchvision's ColorJitter)")
    if not (number(spec.hue) and 0 <= spec.hue <= 0.5):
        fail("hue", "a strength in [0, 0.5]")
    sigma = spec.blur_sigma
    if not (isinstance(sigma, tuple) and len(sigma) == 2 and all(number(v) for v in sigma) and 0 < sigma[0] <= sigma[1]):
        fail("blur_sigma", "[low, high] with 0 < low <= high")
    return spec


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand(1, generator=generator).item()


def _happens(generator: torch.Generator, p: float) -> bool:
    return torch.rand(1, generator=generator).item() < p


def _jitter(image: Image.Image, spec: Photometric, generator: torch.Generator) -> Image.Image:
    """Brightness, contrast, saturation and hue in a random order, factors as torchvision's ColorJitter."""
    adjustments = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    ranges = [(max(0.0, 1 - spec.brightness), 1 + spec.brightness),
              (max(0.0, 1 - spec.contrast), 1 + spec.contrast),
              (max(0.0, 1 - spec.saturation), 1 + spec.saturation),
              (-spec.hue, spec.hue)]
    order = torch.randperm(4, generator=generator).tolist()
    factors = [_uniform(generator, *r) for r in ranges]
    for index in order:
        image = adjustments[index](image, factors[index])
    return image


def augment_view(image: Image.Image, spec: Photometric, slot: int, generator: torch.Generator) -> Image.Image:
    """Return the photometrically augmented view; slot is 0 (first global view), 1 (other global views) or
    2 (local views), which picks the blur and solarisation probabilities."""
    if _happens(generator, spec.flip_p):
        image = TF.hflip(image)
    if _happens(generator, spec.jitter_p):
        image = _jitter(image, spec, generator)
    if _happens(generator, spec.grayscale_p):
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if _happens(generator, spec.blur_p[slot]):
        scale = max(image.width, image.height) / REFERENCE_SIZE
        sigma = _uniform(generator, *spec.blur_sigma) * scale
        image = image.filter(ImageFilter.GaussianBlur(radius=sigma))
    if _happens(generator, spec.solarize_p[slot]):
        image = TF.solarize(image, 128)
    return image
