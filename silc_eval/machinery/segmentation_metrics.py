"""Semantic segmentation metrics exactly as mmseg's IoUMetric computes them (PROTOCOLS.md section 4).

Per image, a confusion matrix over valid pixels (label != ignore_index) is added to a
dataset-level total; IoU_c = I_c / U_c and Acc_c = I_c / label_c from the totals; mIoU and
mAcc are NaN-means over classes (a class absent from both predictions and labels gives NaN
and is dropped); aAcc = sum I / sum label. The confusion matrix is one bincount per image,
on CPU or GPU.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = 255


def reduce_zero_label(label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Return label with 0 -> ignore_index and every other class shifted down by one (mmseg's convention)."""
    label = label.long()
    reduced = label - 1
    reduced[(label == 0) | (label == ignore_index)] = ignore_index
    return reduced


def confusion_matrix(prediction: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (matrix, stray): the (num_classes, num_classes) int64 counts of (label, prediction) pairs of
    valid pixels, and per label class the valid pixels whose prediction lies outside [0, num_classes).

    Pixels whose label is ignore_index are skipped; stray predictions count towards the
    label's area only, as mmseg's histograms do.
    """
    label, prediction = label.reshape(-1).long(), prediction.reshape(-1).long()
    valid = label != ignore_index
    label, prediction = label[valid], prediction[valid]
    in_range = (prediction >= 0) & (prediction < num_classes)
    matrix = torch.bincount(label[in_range] * num_classes + prediction[in_range], minlength=num_classes ** 2)
    matrix = matrix.reshape(num_classes, num_classes)
    stray = torch.bincount(label[~in_range], minlength=num_classes)[:num_classes]
    return matrix, stray


class SegmentationMeter:
    """Dataset-level sums of intersection, union, predicted and labelled areas per class."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.stray_label = torch.zeros(num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Add one image's (H, W) prediction and label; returns nothing."""
        if prediction.shape != label.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in size")
        matrix, stray = confusion_matrix(prediction, label, self.num_classes, self.ignore_index)
        self.matrix += matrix.cpu()
        self.stray_label += stray.cpu()

    def areas(self) -> dict[str, torch.Tensor]:
        """Return per-class float64 totals: intersect, union, pred_label, label."""
        intersect = self.matrix.diagonal().double()
        area_pred = self.matrix.sum(dim=0).double()
        area_label = self.matrix.sum(dim=1).double() + self.stray_label.double()
        return {"intersect": intersect, "union": area_pred + area_label - intersect, "pred_label": area_pred,
                "label": area_label}

    def compute(self) -> dict[str, object]:
        """Return mIoU, mAcc, aAcc (fractions) and per-class IoU / Acc lists (NaN for absent classes)."""
        areas = self.areas()
        with torch.no_grad():
            iou = areas["intersect"] / areas["union"]
            acc = areas["intersect"] / areas["label"]
        return {"mIoU": float(torch.nanmean(iou)), "mAcc": float(torch.nanmean(acc)),
                "aAcc": float(areas["intersect"].sum() / areas["label"].sum()),
                "per_class_iou": iou.tolist(), "per_class_acc": acc.tolist()}
