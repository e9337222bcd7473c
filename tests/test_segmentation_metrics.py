"""Segmentation metrics equal mmseg 1.2.2's IoUMetric on the same predictions and labels."""

import math

import numpy as np
import pytest
import torch
from mmseg.evaluation import IoUMetric

from silc_eval.data.segmentation import reduce_zero_label
from silc_eval.machinery.segmentation_metrics import SegmentationMeter

NUM_CLASSES = 6


def make_pairs(seed, n_images=5, absent=(4,), reduce=False):
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for index in range(n_images):
        h, w = 17 + index, 23 - index
        label = torch.randint(0, NUM_CLASSES + int(reduce), (h, w), generator=generator)
        prediction = torch.where(torch.rand(h, w, generator=generator) < 0.6, label - int(reduce),
                                 torch.randint(0, NUM_CLASSES, (h, w), generator=generator))
        for cls in absent:  # a class never predicted and never labelled -> NaN, dropped by nanmean
            label[label == cls + int(reduce)] = 0 if not reduce else 1
            prediction[prediction == cls] = 0
        label[torch.rand(h, w, generator=generator) < 0.1] = 255  # ignored pixels
        if reduce:
            label = reduce_zero_label(label)
        prediction = prediction.clamp(0, NUM_CLASSES - 1)
        pairs.append((prediction, label))
    return pairs


def mmseg_result(pairs):
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(NUM_CLASSES)]}
    metric.process({}, [{"pred_sem_seg": {"data": p[None]}, "gt_sem_seg": {"data": l[None]}} for p, l in pairs])
    results = tuple(zip(*metric.results))
    totals = [sum(r) for r in results]
    per_class = IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])
    return metric.compute_metrics(metric.results), per_class


@pytest.mark.parametrize("seed,reduce", [(0, False), (1, False), (2, True)])
def test_metrics_equal_mmseg_iou_metric(seed, reduce):
    pairs = make_pairs(seed, reduce=reduce)
    meter = SegmentationMeter(NUM_CLASSES)
    for prediction, label in pairs:
        meter.update(prediction, label)
    ours = meter.compute()
    summary, per_class = mmseg_result(pairs)
    assert np.allclose(ours["per_class_iou"], per_class["IoU"], equal_nan=True, atol=1e-6)  # mmseg sums in float32
    assert np.allclose(ours["per_class_acc"], per_class["Acc"], equal_nan=True, atol=1e-6)  # mmseg sums in float32
    assert ours["aAcc"] == pytest.approx(float(per_class["aAcc"]), abs=1e-6)
    assert round(100 * ours["mIoU"], 2) == summary["mIoU"]
    assert round(100 * ours["mAcc"], 2) == summary["mAcc"]
    assert round(100 * ours["aAcc"], 2) == summary["aAcc"]
    assert math.isnan(ours["per_class_iou"][4]) and 0 < ours["mIoU"] < 1


def test_reduce_zero_label_follows_mmseg():
    label = torch.tensor([[0, 1, 2], [255, 150, 3]])
    assert reduce_zero_label(label).tolist() == [[255, 0, 1], [255, 149, 2]]


def test_hand_made_case_and_dataset_level_sums():
    meter = SegmentationMeter(3)
    meter.update(torch.tensor([[0, 0], [1, 1]]), torch.tensor([[0, 1], [1, 255]]))
    meter.update(torch.tensor([[2, 2]]), torch.tensor([[2, 0]]))
    result = meter.compute()
    # class 0: I=1, U=3 (pred 0: 2 valid pixels, label 0: 2) ; class 1: I=1, U=2 ; class 2: I=1, U=2
    assert result["per_class_iou"] == pytest.approx([1 / 3, 1 / 2, 1 / 2])
    assert result["aAcc"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="differ in size"):
        meter.update(torch.zeros(2, 2), torch.zeros(3, 2))
