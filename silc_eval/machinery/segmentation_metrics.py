"""Semantic segmentation metrics exactly as mmseg's IoUMetric computes them (benchmarks/PROTOCOLS.md section 4.5).

Per image, a confusion matrix over valid pixels (label != ignore_index) gives that image's
per-class intersection, union, predicted and labelled pixel counts; those per-image counts
are the task's per-sample outcomes. The dataset-level metrics come from their SUMS:
IoU_c = I_c / U_c and Acc_c = I_c / label_c; mIoU and mAcc are NaN-means over classes (a
class absent from both predictions and labels gives NaN and is dropped); aAcc = sum I /
sum label. The confusion matrix is one bincount per image, on CPU or GPU.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from silc_eval.core import distributed
from silc_eval.core.contract import Metric
from silc_eval.core.labels import IGNORE_INDEX
from silc_eval.core.resampling import UnitStatistics, nanmean, ratio

COUNT_FIELDS = ("intersect", "union", "pred_label", "label")  # per image, per class
# The metrics every segmentation task reports (the open-vocabulary task adds its seen/unseen means).
SEGMENTATION_METRICS = (Metric("mIoU"), Metric("mAcc"), Metric("aAcc"), Metric("IoU.{class}"))


def confusion_matrix(prediction: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (matrix, stray): the (num_classes, num_classes) int64 counts of (label, prediction) pairs of
    valid pixels, and per label class the valid pixels whose prediction lies outside [0, num_classes).

    Pixels whose label is ignore_index are skipped; stray predictions count towards the
    label's area only, as mmseg's histograms do.
    """
    # One bincount over a (C + 1) x (C + 1) grid: row C gathers the skipped pixels (ignore_index; the readers
    # check that every other label lies in [0, C)), column C the stray predictions.
    label, prediction = label.reshape(-1), prediction.reshape(-1)
    rows = torch.where((label != ignore_index) & (label >= 0) & (label < num_classes), label, num_classes).long()
    cols = torch.where((prediction >= 0) & (prediction < num_classes), prediction, num_classes).long()
    grid = torch.bincount(rows * (num_classes + 1) + cols, minlength=(num_classes + 1) ** 2)
    grid = grid.reshape(num_classes + 1, num_classes + 1)
    matrix, stray = grid[:num_classes, :num_classes], grid[:num_classes, num_classes]
    return matrix, stray


def image_counts(prediction: torch.Tensor, label: torch.Tensor, num_classes: int,
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Return one image's (4, num_classes) int64 counts: intersect, union, pred_label, label (COUNT_FIELDS)."""
    matrix, stray = confusion_matrix(prediction, label, num_classes, ignore_index)
    intersect = matrix.diagonal()
    pred, area = matrix.sum(dim=0), matrix.sum(dim=1) + stray
    return torch.stack([intersect, pred + area - intersect, pred, area]).cpu()


def scores_from_counts(counts: Mapping[str, np.ndarray]) -> dict[str, object]:
    """Return mIoU, mAcc, aAcc (fractions) and per-class IoU / Acc lists (NaN for absent classes) from
    per-image counts {field: (N, C)} (COUNT_FIELDS), summed over the images."""
    total = {name: np.asarray(counts[name], dtype=np.int64).sum(axis=0).astype(np.float64) for name in COUNT_FIELDS}
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = total["intersect"] / total["union"]
        acc = total["intersect"] / total["label"]
        accuracy = total["intersect"].sum() / total["label"].sum()
    return {"mIoU": _nanmean(iou), "mAcc": _nanmean(acc), "aAcc": float(accuracy),
            "per_class_iou": iou.tolist(), "per_class_acc": acc.tolist()}


def _nanmean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


class SegmentationMeter:
    """The per-image counts of a dataset, image by image, and the dataset-level metrics of their sums."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.rows: list[torch.Tensor] = []

    def update(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Add one image's (H, W) prediction and label; returns nothing."""
        if prediction.shape != label.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in size")
        self.rows.append(image_counts(prediction, label, self.num_classes, self.ignore_index))

    def gather(self, total: int) -> "SegmentationMeter":
        """Return self after joining every rank's rows in dataset order (each rank held a contiguous block of
        the total images; no-op for one process)."""
        local = torch.stack(self.rows) if self.rows else torch.empty(0, len(COUNT_FIELDS), self.num_classes,
                                                                     dtype=torch.int64)
        self.rows = list(distributed.gather_in_order(local, total))
        return self

    def counts(self) -> dict[str, np.ndarray]:
        """Return the per-image counts {field: (N, C) int64} (COUNT_FIELDS)."""
        stacked = torch.stack(self.rows).numpy() if self.rows else np.zeros((0, 4, self.num_classes), np.int64)
        return {name: stacked[:, i] for i, name in enumerate(COUNT_FIELDS)}

    def compute(self) -> dict[str, object]:
        """Return mIoU, mAcc, aAcc (fractions) and per-class IoU / Acc lists (NaN for absent classes)."""
        return scores_from_counts(self.counts())


def per_class_metrics(scores: Mapping[str, object], class_names: Sequence[str]) -> dict[str, float | None]:
    """Return mIoU, mAcc, aAcc and one 'IoU.<class>' entry per class (None where the class is absent)."""
    metrics: dict[str, float | None] = {"mIoU": scores["mIoU"], "mAcc": scores["mAcc"], "aAcc": scores["aAcc"]}
    for name, iou in zip(class_names, scores["per_class_iou"]):
        metrics[f"IoU.{name}"] = None if math.isnan(iou) else iou
    return metrics


def counts_samples(meter: SegmentationMeter, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Return a segmentation task's per-sample outcomes: per image and class the four counts (int32 when
    they fit), and the class names (a unicode array, so the sidecar needs no pickle)."""
    counts = meter.counts()
    narrow = all(int(a.max(initial=0)) < 2 ** 31 for a in counts.values())
    samples = {name: a.astype(np.int32 if narrow else np.int64) for name, a in counts.items()}
    samples["class_names"] = np.array(list(class_names), dtype=str)
    return samples


def seeded_counts_samples(meters: Sequence[SegmentationMeter], class_names: Sequence[str],
                          seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """Return the per-sample outcomes of one trained head per seed: each count field stacked to (S, N, C) in
    seed order, the class names and the seeds (S,)."""
    per_seed = [counts_samples(meter, class_names) for meter in meters]
    samples = {name: np.stack([one[name] for one in per_seed]) for name in COUNT_FIELDS}
    samples["class_names"] = per_seed[0]["class_names"]
    samples["seeds"] = np.asarray(list(seeds), dtype=np.int64)
    return samples


# The per-seed and spread entries of a task that trains one head per seed (seeded_score).
SEED_METRICS = (Metric("{metric}_seed{seed}", "none"), Metric("{metric}_std", "none"))


def seeded_score(samples: Mapping[str, np.ndarray], score_one) -> dict[str, float | None]:
    """Return score_one's metrics of per-sample outcomes, averaged over seeds when the counts are (S, N, C).

    With seeds, each metric is the mean over the seeds where it is defined (None where it is
    defined for none), and every metric without a '.' in its name also gets '<metric>_seed<s>'
    per seed and '<metric>_std' (the sample standard deviation over seeds, 0 for one seed).
    Counts of shape (N, C) are one head: score_one(samples) unchanged.
    """
    if np.asarray(samples["intersect"]).ndim == 2:
        return score_one(samples)
    seeds = [int(seed) for seed in samples["seeds"]]
    per_seed = []
    for index in range(len(seeds)):
        one = {name: (value[index] if name in COUNT_FIELDS else value) for name, value in samples.items()
               if name != "seeds"}
        per_seed.append(score_one(one))
    metrics: dict[str, float | None] = {}
    for name in per_seed[0]:
        values = [m[name] for m in per_seed if m[name] is not None and not math.isnan(m[name])]
        metrics[name] = float(np.mean(values)) if values else None
    for name in [n for n in per_seed[0] if "." not in n]:
        for seed, one in zip(seeds, per_seed):
            metrics[f"{name}_seed{seed}"] = one[name]
        values = [m[name] for m in per_seed if m[name] is not None and not math.isnan(m[name])]
        metrics[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None)
    return metrics


def segmentation_score(samples: Mapping[str, np.ndarray], params: Mapping | None = None) -> dict[str, float | None]:
    """Return mIoU, mAcc, aAcc and IoU.<class> of a segmentation task's per-sample outcomes (counts_samples, or
    seeded_counts_samples: then the mean over seeds, each seed's and their spread, see seeded_score)."""
    if np.asarray(samples["intersect"]).ndim == 3:
        return seeded_score(samples, segmentation_score)
    return per_class_metrics(scores_from_counts(samples), [str(n) for n in samples["class_names"]])


def _harmonic(seen: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    """Return 2SU/(S+U) elementwise: 0 where both are 0, NaN where either is NaN (as the open-vocabulary score)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = 2 * seen * unseen / (seen + unseen)
    return np.where((seen + unseen) == 0, 0.0, harmonic)


def segmentation_unit_statistics(samples: Mapping[str, np.ndarray],
                                 params: Mapping | None = None) -> UnitStatistics:
    """Return the per-image UnitStatistics of segmentation counts: per image (and seed, for counts of shape
    (S, N, C); (N, C) is one seed) and class the intersect, union, pred_label and label pixels.

    A resample's mIoU, mAcc, aAcc and IoU.<class> come from the summed counts exactly as scores_from_counts
    computes them; with an `unseen` class mask also mIoU_seen, mIoU_unseen and hIoU as the open-vocabulary
    score does. With several seeds each metric is the mean of the per-seed metrics.
    """
    counts = [np.asarray(samples[name], dtype=np.float64) for name in COUNT_FIELDS]
    counts = [c[None] if c.ndim == 2 else c for c in counts]  # (S, N, C)
    values = np.concatenate(counts, axis=-1).transpose(1, 0, 2)  # (N, S, 4C)
    num_classes = counts[0].shape[-1]
    names = [f"IoU.{name}" for name in samples["class_names"]]
    unseen = np.asarray(samples["unseen"], dtype=bool) if "unseen" in samples else None

    def reduce(sums: np.ndarray) -> dict[str, np.ndarray]:
        intersect, union, _, label = (sums[..., i * num_classes:(i + 1) * num_classes] for i in range(4))
        iou = ratio(intersect, union)
        metrics = {"mIoU": nanmean(iou), "mAcc": nanmean(ratio(intersect, label)),
                   "aAcc": ratio(intersect.sum(axis=-1), label.sum(axis=-1))}
        metrics.update({name: iou[..., c] for c, name in enumerate(names)})
        if unseen is not None:
            seen_mean, unseen_mean = nanmean(iou[..., ~unseen]), nanmean(iou[..., unseen])
            metrics.update({"hIoU": _harmonic(seen_mean, unseen_mean), "mIoU_seen": seen_mean,
                            "mIoU_unseen": unseen_mean})
        return metrics

    return UnitStatistics(values, reduce)
