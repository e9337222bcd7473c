"""Sliding-window dense inference shared by the segmentation tasks (mmseg's `slide` mode, benchmarks/PROTOCOLS.md 4.1).

An image is resized so its short side is S (aspect kept, as mmseg's keep-ratio Resize with
scale (2048, S)), cut into windows of W with stride T (no padding: the last window is
shifted back inside the image), each window's patch-level logits are upsampled bilinearly
to the window, overlapping logits are averaged, and the result is upsampled bilinearly to
the ORIGINAL image size. Windows of one shape are batched, across images too. A window of 0
(WHOLE_IMAGE) encodes the whole resized image in one forward, as the reference code does with
slide_crop 0 (mmseg's `whole` mode): its logits are upsampled to the resized image, then to the
original size, exactly as a single window covering the image would be.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from silc_eval.core.errors import UserError

LONG_SIDE_CAP = 2048
WHOLE_IMAGE = 0  # a window of 0: the whole resized image in one forward (the reference code's slide_crop 0)


def normalization_tensors(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the model's eval (mean, std) as float32 tensors of shape (3, 1, 1)."""
    mean, std = model.normalization
    return (torch.tensor(mean, dtype=torch.float32).view(3, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(3, 1, 1))


def short_side_size(height: int, width: int, short_side: int, long_cap: int = LONG_SIDE_CAP) -> tuple[int, int]:
    """Return (height, width) rescaled so the short side is short_side and the long side at most long_cap."""
    scale = min(long_cap / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


RESIZES = ("torch", "mmcv")


def prepare_image(image: torch.Tensor, short_side: int | None, mean: torch.Tensor, std: torch.Tensor,
                  resize: str = "torch") -> torch.Tensor:
    """Return a uint8 (3, H, W) image as a normalised float tensor, resized bilinearly to the short side.

    resize "torch": the float image through F.interpolate (no rounding); "mmcv": the uint8 image through OpenCV's
    INTER_LINEAR (fixed-point, rounded to uint8), as mmcv's Resize does in the SCLIP family's reference pipelines.
    """
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, not {resize!r}")
    size = short_side_size(image.shape[-2], image.shape[-1], short_side) if short_side else tuple(image.shape[-2:])
    if size == tuple(image.shape[-2:]):
        x = image.float().div(255.0)
    elif resize == "mmcv":
        x = _opencv_resize(image, size).float().div(255.0)
    else:
        x = F.interpolate(image.float().div(255.0)[None], size=size, mode="bilinear", align_corners=False)[0]
    return (x - mean.to(x.device)) / std.to(x.device)


def _opencv_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Return the uint8 (3, H, W) image resized to size (height, width) by cv2.resize with INTER_LINEAR."""
    try:
        import cv2
    except ImportError:
        raise UserError("resize: mmcv needs OpenCV (pip install opencv-python-headless); expected 'import cv2' to "
                        "work, or resize: torch") from None
    array = image.permute(1, 2, 0).contiguous().cpu().numpy()
    resized = cv2.resize(array, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(resized).permute(2, 0, 1).to(image.device)


def window_boxes(height: int, width: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Return the (top, bottom, left, right) boxes of mmseg's slide inference for an image of this size; window 0
    is WHOLE_IMAGE: one box, the image itself (stride unused)."""
    if window == WHOLE_IMAGE:
        return [(0, height, 0, width)]
    rows = max(height - window + stride - 1, 0) // stride + 1
    cols = max(width - window + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            bottom, right = min(r * stride + window, height), min(c * stride + window, width)
            boxes.append((max(bottom - window, 0), bottom, max(right - window, 0), right))
    return boxes


Box = tuple[int, int, int, int]  # (top, bottom, left, right)


def slide_logits(images: Sequence[torch.Tensor], window_fn: Callable[[torch.Tensor], torch.Tensor],
                 window: int, stride: int, batch_size: int,
                 output_sizes: Sequence[tuple[int, int]] | None = None) -> list[torch.Tensor]:
    """Return per image the (Q, h, w) window-averaged logits, upsampled to output_sizes[i] when given.

    images are prepared (normalised, resized) (3, H, W) tensors; window_fn maps a batch of
    windows (N, 3, h, w) to patch-level logits (N, Q, gh, gw). Up to batch_size windows of
    the same shape go through window_fn together.
    """
    def logits_fn(chunk: Sequence[tuple[int, Box]]) -> torch.Tensor:
        return window_fn(torch.stack([images[i][:, t:b, l:r] for i, (t, b, l, r) in chunk]))

    return slide_boxes([tuple(image.shape[-2:]) for image in images], logits_fn, window, stride, batch_size,
                       output_sizes)


def window_chunks(sizes: Sequence[tuple[int, int]], window: int, stride: int,
                  batch_size: int) -> Iterator[tuple[tuple[int, int], list[tuple[int, Box]]]]:
    """Yield (box shape, up to batch_size (image index, box) pairs of that shape) over every window of images
    of the given sizes: windows of one shape are batched across images, in image then box order."""
    by_shape: dict[tuple[int, int], list[tuple[int, Box]]] = {}
    for index, (height, width) in enumerate(sizes):
        for box in window_boxes(height, width, window, stride):
            by_shape.setdefault((box[1] - box[0], box[3] - box[2]), []).append((index, box))
    for shape, group in by_shape.items():
        for start in range(0, len(group), batch_size):
            yield shape, group[start:start + batch_size]


def _as_index(positions: list[int]) -> slice | list[int]:
    """Return positions as a slice when they step evenly (a view, no copy), else as the list."""
    step = positions[1] - positions[0] if len(positions) > 1 else 1
    if step > 0 and all(b - a == step for a, b in zip(positions, positions[1:])):
        return slice(positions[0], positions[-1] + 1, step)
    return positions


def slide_boxes(sizes: Sequence[tuple[int, int]], logits_fn: Callable[[Sequence[tuple[int, Box]]], torch.Tensor],
                window: int, stride: int, batch_size: int,
                output_sizes: Sequence[tuple[int, int]] | None = None) -> list[torch.Tensor]:
    """Return per image the (Q, h, w) window-averaged logits of images of the given prepared sizes, on the
    device of logits_fn's output.

    logits_fn maps up to batch_size (image index, box) pairs whose boxes share one shape to the
    patch-level logits (n, Q, gh, gw) of those windows; each is upsampled bilinearly to its box,
    overlaps are averaged, and each image's result is upsampled to output_sizes[i] when given.
    Images of one size are summed together, one addition per box and batch, each pixel's windows
    added in box order as a loop over the windows would.
    """
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(index)
    slot = {index: (size, k) for size, members in by_size.items() for k, index in enumerate(members)}
    sums: dict[tuple[int, int], torch.Tensor] = {}
    for shape, chunk in window_chunks(sizes, window, stride, batch_size):
        logits = F.interpolate(logits_fn(chunk).float(), size=shape, mode="bilinear", align_corners=False)
        groups: dict[tuple, tuple[list[int], list[int]]] = {}
        for row, (index, box) in enumerate(chunk):
            size, k = slot[index]
            slots, rows = groups.setdefault((size, box), ([], []))
            slots.append(k)
            rows.append(row)
        for (size, (t, b, l, r)), (slots, rows) in sorted(groups.items()):  # box order: top, then left
            if size not in sums:
                sums[size] = logits.new_zeros((len(by_size[size]), logits.shape[1], *size))
            sums[size][_as_index(slots), :, t:b, l:r] += logits[_as_index(rows)]
    averaged: list[torch.Tensor | None] = [None] * len(sizes)
    for size, members in by_size.items():
        counts = torch.zeros(size, device=sums[size].device)
        for t, b, l, r in window_boxes(*size, window, stride):
            counts[t:b, l:r] += 1
        for index, mean in zip(members, sums[size] / counts):
            target = tuple(output_sizes[index]) if output_sizes is not None else size
            if target != size:
                mean = F.interpolate(mean[None], size=target, mode="bilinear", align_corners=False)[0]
            averaged[index] = mean
    return averaged


@functools.lru_cache(maxsize=64)
def bilinear_matrix(size_out: int, size_in: int) -> torch.Tensor:
    """Return the (size_out, size_in) float64 weights of 1-D bilinear upsampling (align_corners=False), as
    F.interpolate computes them (interpolating the identity), on the CPU; 2-D upsampling of x is
    rows @ x @ cols.T."""
    identity = torch.eye(size_in, dtype=torch.float64)[None]
    return F.interpolate(identity, size=size_out, mode="linear", align_corners=False)[0].T.contiguous()
