"""Frozen features of every sliding window of a segmentation split, computed once and read by any head.

A dense task is a frozen backbone (model.dense_features or model.patch_tokens) followed by
something cheap: a text matrix (zero-shot), a linear probe or a small decoder (trained
heads, several seeds). The backbone's features of the evaluation windows are therefore
computed once per (model, feature, dataset, window geometry, precision), kept in the feature
cache on disk (features/cache.py), and every head (every seed) is slid over them:

- window_features: the features of every window of this rank's images, from the cache or
  computed (windows of one shape batched across images, exactly as slide_logits batches);
- slid_meters: per head a SegmentationMeter of postprocess(window-averaged head logits), over
  the labels only (on a cache hit no image is decoded); the images come back in dataset
  order on every rank.

The geometry is mmseg's slide inference, or one window per image when window is 0 (windows.py); every
parameter of it (GEOMETRY) is in the cache key; features are float32, so sliding a head over cached
features gives the logits sliding it over the images would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from silc_eval.core import distributed
from silc_eval.core.log import note
from silc_eval.features import OrderedLoader, autocast_context, precision_label
from silc_eval.features import cache as feature_cache
from silc_eval.machinery.dense_segmentation import image_batches
from silc_eval.machinery.segmentation_metrics import SegmentationMeter
from silc_eval.machinery.shared_trunk import Session, SharedTrunk
from silc_eval.machinery.windows import (
    Box,
    normalization_tensors,
    prepare_image,
    short_side_size,
    slide_boxes,
    window_chunks,
)
from silc_eval.models import dense

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # windows (N, 3, h, w) -> features (N, gh, gw, D)
HeadFn = Callable[[torch.Tensor], torch.Tensor]  # features (n, gh, gw, D) float32 -> logits (n, Q, gh, gw)
GEOMETRY = ("short_side", "window", "stride", "resize")
LIMIT_ENV = "SILC_EVAL_WINDOW_FEATURES_MAX_GB"
DEFAULT_LIMIT_GB = 4.0


@dataclass
class WindowFeatures:
    """Per image of a shard, {box: float32 features (gh, gw, D)} of each of its windows (CPU)."""

    per_image: list[dict[Box, torch.Tensor]]

    def __len__(self) -> int:
        return len(self.per_image)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Return the flat arrays the cache stores: features, per-window (box, shape) and per-image window counts."""
        windows = [(box, tensor) for boxes in self.per_image for box, tensor in boxes.items()]
        flat = [tensor.reshape(-1) for _, tensor in windows]
        return {
            "features": torch.cat(flat).numpy() if flat else np.zeros(0, np.float32),
            "windows": np.array([[*box, *tensor.shape] for box, tensor in windows], dtype=np.int64).reshape(-1, 7),
            "counts": np.array([len(boxes) for boxes in self.per_image], dtype=np.int64),
        }

    def batches(self, shard, params: dict, progress: bool, desc: str, images: bool = False) -> Iterator:
        """Yield (images, labels, per-image {box: features}) of shard's images in order; only label maps are read
        (images are None) unless images is set."""
        done = 0
        for items in tqdm(_batches(shard, images_per_step(params), params["num_workers"], labels_only=not images),
                          disable=not progress, desc=desc, leave=False):
            yield [image for image, _, _ in items], [label for _, label, _ in items], \
                self.per_image[done:done + len(items)]
            done += len(items)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "WindowFeatures":
        """Return the WindowFeatures stored as to_arrays wrote them."""
        flat = torch.from_numpy(np.ascontiguousarray(arrays["features"]))
        rows = arrays["windows"].tolist()
        sizes = [gh * gw * dim for *_, gh, gw, dim in rows]
        pieces = torch.split(flat, sizes) if rows else []
        per_image, position = [], 0
        for count in arrays["counts"].tolist():
            boxes = {}
            for (t, b, l, r, gh, gw, dim), piece in zip(rows[position:position + count],
                                                         pieces[position:position + count]):
                boxes[(t, b, l, r)] = piece.view(gh, gw, dim)
            per_image.append(boxes)
            position += count
        return cls(per_image)


def prepared_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """Return the (height, width) prepare_image gives an image of this size."""
    return short_side_size(height, width, short_side) if short_side else (height, width)


class _Labels(Dataset):
    """View of a segmentation dataset (or a Subset of one) yielding (None, label, index); a dataset with a
    label(index) method (SegmentationDataset) decodes no image."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        base, position = self.dataset, index
        while isinstance(base, Subset):
            base, position = base.dataset, base.indices[position]
        if hasattr(base, "label"):
            return None, base.label(position), index
        return None, base[position][1], index


def _batches(dataset, images_per_step: int, num_workers: int, labels_only: bool) -> OrderedLoader:
    return image_batches(_Labels(dataset) if labels_only else dataset, images_per_step, num_workers)


def batch_features(model, images: Sequence[torch.Tensor], feature_fn: FeatureFn,
                   params: dict) -> list[dict[Box, torch.Tensor]]:
    """Return per uint8 image (3, H, W) {box: float32 CPU features (gh, gw, D)} of each of its windows."""
    mean, std = normalization_tensors(model)
    prepared = [prepare_image(image.to(model.device), params["short_side"], mean, std, params["resize"])
                for image in images]
    boxes: list[dict[Box, torch.Tensor]] = [{} for _ in prepared]
    for _, chunk in window_chunks([tuple(image.shape[-2:]) for image in prepared], params["window"],
                                  params["stride"], params["batch_size"]):
        windows = torch.stack([prepared[i][:, t:b, l:r] for i, (t, b, l, r) in chunk])
        with torch.inference_mode(), autocast_context(model.device, params["amp"]):
            features = feature_fn(windows).float().cpu()
        for (i, box), one in zip(chunk, features):
            boxes[i][box] = one.clone()
    return boxes


def images_per_step(params: dict) -> int:
    """Return how many images one step of sliding takes (a quarter of the window batch, at least one)."""
    return max(1, params["batch_size"] // 4)


def memory_limit_bytes() -> int:
    """Return how many bytes of window features a split may hold in memory (and in the cache):
    $SILC_EVAL_WINDOW_FEATURES_MAX_GB gigabytes, 4 by default."""
    return int(float(os.environ.get(LIMIT_ENV, DEFAULT_LIMIT_GB)) * 1e9)


@dataclass
class StreamedWindows:
    """Window features computed batch by batch while sliding (a split too large to hold): nothing is kept."""

    model: object
    feature_fn: FeatureFn

    def batches(self, shard, params: dict, progress: bool, desc: str, images: bool = False) -> Iterator:
        """Yield (images, labels, per-image {box: features}) of shard's images in order, computing the features."""
        for items in tqdm(_batches(shard, images_per_step(params), params["num_workers"], labels_only=False),
                          disable=not progress, desc=desc, leave=False):
            pictures = [image for image, _, _ in items]
            yield pictures, [label for _, label, _ in items], batch_features(self.model, pictures, self.feature_fn,
                                                                             params)


def _compute(model, shard, feature_fn: FeatureFn, params: dict, progress: bool,
             desc: str) -> WindowFeatures | StreamedWindows:
    """Return the WindowFeatures of shard, or StreamedWindows when the first batch says they would exceed
    memory_limit_bytes()."""
    per_image: list[dict[Box, torch.Tensor]] = []
    limit, held = memory_limit_bytes(), 0
    for items in tqdm(_batches(shard, images_per_step(params), params["num_workers"], labels_only=False),
                      disable=not progress, desc=f"{desc} features", leave=False):
        added = batch_features(model, [image for image, _, _ in items], feature_fn, params)
        per_image += added
        held += sum(t.numel() * 4 for boxes in added for t in boxes.values())
        if held / len(per_image) * len(shard) > limit:
            note(f"window features of {len(shard)} images would take about "
                 f"{held / len(per_image) * len(shard) / 1e9:.1f} GB (over ${LIMIT_ENV} = {limit / 1e9:g} GB): "
                 f"computed batch by batch while sliding, not cached")
            return StreamedWindows(model, feature_fn)
    return WindowFeatures(per_image)


def window_features(model, dataset, feature_fn: FeatureFn, feature_name: str, params: dict, split: str = "eval",
                    progress: bool = True, desc: str = "segmentation",
                    shared: SharedTrunk | None = None) -> WindowFeatures | StreamedWindows:
    """Return the window features of this rank's shard of dataset (all of it without torchrun): WindowFeatures
    from the disk cache or computed (and stored), or StreamedWindows when they would not fit in memory.

    feature_name identifies feature_fn in the cache key (e.g. 'patch_tokens', 'dense:sclip'). shared, when given,
    computes the same feature as finish(trunk(windows)) and lets sibling features of the same windows run the trunk
    once (machinery/shared_trunk.py).
    """
    shard = distributed.shard_dataset(dataset, images_per_step(params))
    parts = feature_cache.window_key_parts(
        model, dataset, split, f"{feature_name}@dense-code-{dense.CODE_VERSION}",
        {name: params[name] for name in GEOMETRY}, precision_label(model, params["amp"]),
        (distributed.rank(), distributed.world_size()))
    computed: list[WindowFeatures | StreamedWindows] = []

    def compute() -> dict[str, np.ndarray] | None:  # the arrays to store, None when nothing is stored
        session = None
        if shared is not None and parts is not None:
            trunk_key = {**parts, "feature": shared.name, "batch_size": params["batch_size"]}
            session = Session(feature_cache.cache_key(trunk_key), shared)
        computed.append(_compute(model, shard, session or feature_fn, params, progress, desc))
        if session is not None:
            session.close(complete=isinstance(computed[0], WindowFeatures))
        storable = isinstance(computed[0], WindowFeatures) and parts is not None and feature_cache.enabled()
        return computed[0].to_arrays() if storable else None

    arrays = feature_cache.cached_arrays(parts, compute)
    return computed[0] if computed else WindowFeatures.from_arrays(arrays)


def slid_meters(features: WindowFeatures | StreamedWindows, dataset, heads: Sequence[HeadFn], postprocess: Callable,
                params: dict, device="cpu", progress: bool = True, desc: str = "segmentation",
                refine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[SegmentationMeter]:
    """Return per head the SegmentationMeter of postprocess(window-averaged logits) over every image of dataset.

    features are window_features of the same dataset and params (this rank's shard); each head
    maps features (n, gh, gw, D) to patch logits (n, Q, gh, gw), is slid and averaged like
    slide_logits, upsampled to the label's size, refined by refine(uint8 image, logits) when given (the
    images are then read too) and post-processed into a class map.
    """
    meters = [SegmentationMeter(dataset.num_classes, dataset.ignore_index) for _ in heads]
    shard = distributed.shard_dataset(dataset, images_per_step(params))
    for images, labels, stored in features.batches(shard, params, progress, desc, images=refine is not None):
        sizes = [prepared_size(*label.shape[-2:], params["short_side"]) for label in labels]
        for head, meter in zip(heads, meters):
            def logits_fn(chunk: Sequence[tuple[int, Box]]) -> torch.Tensor:
                batch = torch.stack([stored[i][box] for i, box in chunk]).to(device)
                with torch.inference_mode():
                    return head(batch)

            logits = slide_boxes(sizes, logits_fn, params["window"], params["stride"], params["batch_size"],
                                 [tuple(label.shape[-2:]) for label in labels])
            for image, image_logits, label in zip(images, logits, labels):
                if refine is not None:
                    image_logits = refine(image.to(device), image_logits)
                meter.update(postprocess(image_logits).cpu(), label)
    return [meter.gather(len(dataset)) for meter in meters]
