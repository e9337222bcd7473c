"""Pixel-adaptive mask refinement (PAMR; Araslanov and Roth, CVPR 2020), as NACLIP applies it to dense logits.

Each pixel's class scores are replaced, a number of times, by a weighted average of its neighbours' scores:
the 8 neighbours of a 3x3 kernel at each dilation (NACLIP: 8 and 16), borders replicated. The weights come
from the image alone: the absolute colour difference to each neighbour, divided by 0.1 times the standard
deviation of the pixel's whole neighbourhood (its 3x3 kernel at every dilation, centre included), averaged
over colour channels, negated and normalised by a softmax over the neighbours. NACLIP refines the window-
averaged logits at the original image size, guided by the network's input image resized to that size.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]  # the 3x3 kernel minus its centre


def _neighbours(x: torch.Tensor, dilations: Sequence[int], centre: bool) -> torch.Tensor:
    """Return (B, C, P, H, W): x (B, C, H, W) shifted to each neighbour (borders replicated), dilation by dilation,
    with the centre as well (once per dilation) when centre is set."""
    height, width = x.shape[-2:]
    shifted = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate")
        offsets = OFFSETS[:4] + [(0, 0)] + OFFSETS[4:] if centre else OFFSETS
        shifted += [padded[..., d + dy * d:d + dy * d + height, d + dx * d:d + dx * d + width] for dy, dx in offsets]
    return torch.stack(shifted, dim=2)


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int], sigma: float = 0.1) -> torch.Tensor:
    """Return the neighbour weights (B, 1, 8 * len(dilations), H, W) of an image (B, 3, H, W); they sum to 1."""
    spread = _neighbours(image, dilations, centre=True).std(dim=2, keepdim=True)
    difference = (_neighbours(image, dilations, centre=False) - image[:, :, None]).abs()
    return F.softmax((-difference / (1e-8 + sigma * spread)).mean(dim=1, keepdim=True), dim=2)


def pamr_refine(image: torch.Tensor, logits: torch.Tensor, steps: int, dilations: Sequence[int]) -> torch.Tensor:
    """Return logits (B, Q, H, W) refined by steps rounds of PAMR guided by image (B, 3, H, W) at the same size."""
    if image.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"PAMR needs the image at the logits' size, got {tuple(image.shape[-2:])} and "
                         f"{tuple(logits.shape[-2:])}")
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half-precision logits are refined in float32
    weights = pamr_affinity(image.to(dtype), dilations)
    refined = logits.to(dtype)
    for _ in range(steps):
        refined = (_neighbours(refined, dilations, centre=False) * weights).sum(dim=2)
    return refined.to(logits.dtype)
