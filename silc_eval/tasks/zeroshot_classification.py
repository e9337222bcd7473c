"""Zero-shot classification with template ensembling (PROTOCOLS.md section 1, CLIP_benchmark conventions).

Per-sample outcomes: per image its target, its top-5 predicted classes (one sorted torch.topk,
fewer columns when the dataset has fewer than 5 classes) and its argmax prediction. acc1 and
acc5 are read off the top-5, mean per-class recall off the argmax, as CLIP_benchmark computes
them; the two first choices differ only between exactly tied logits.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from silc_eval.core.contract import Metric, Outcome, Task
from silc_eval.core.params import boolean, integer, number
from silc_eval.core.resampling import UnitStatistics, nanmean, ratio
from silc_eval.features import encode_images
from silc_eval.machinery.prompts import ensemble_prompts

TOP_K = 5


def mean_per_class_recall(predictions, targets) -> float:
    """Return balanced accuracy: the mean over classes present in targets of their recall."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    return float(np.mean([(predictions[targets == c] == c).mean() for c in np.unique(targets)]))


def score(samples: Mapping[str, np.ndarray], params: Mapping | None = None) -> dict[str, float]:
    """Return acc1, acc5 (NaN with fewer than 5 classes) and mean_per_class_recall of the per-sample outcomes."""
    target, top = np.asarray(samples["target"]), np.asarray(samples["top5"])
    correct = top == target[:, None]
    return {
        "acc1": float(correct[:, 0].mean()),
        "acc5": float(correct[:, :TOP_K].any(axis=1).mean()) if int(samples["num_classes"]) >= TOP_K else math.nan,
        "mean_per_class_recall": mean_per_class_recall(samples["prediction"], target),
    }


def unit_statistics(samples: Mapping[str, np.ndarray], params: Mapping | None = None) -> UnitStatistics:
    """Return the per-image UnitStatistics of the outcomes: count, correct@1, correct@5, then per class the
    one-hot count and hit (argmax) of the image's target, so a resample's acc1, acc5 and mean per-class
    recall are computed as score computes them."""
    from scipy import sparse

    target, top = np.asarray(samples["target"]), np.asarray(samples["top5"])
    num_classes, n = int(samples["num_classes"]), len(target)
    correct1, correct5 = top[:, 0] == target, (top[:, :TOP_K] == target[:, None]).any(axis=1)
    hit = np.asarray(samples["prediction"]) == target
    rows = np.repeat(np.arange(n), 5)
    columns = np.stack([np.zeros(n, int), np.ones(n, int), np.full(n, 2), 3 + target, 3 + num_classes + target], 1)
    data = np.stack([np.ones(n), correct1, correct5, np.ones(n), hit], 1).astype(np.float64)
    values = sparse.csr_matrix((data.ravel(), (rows, columns.ravel())), shape=(n, 3 + 2 * num_classes))

    def reduce(sums: np.ndarray) -> dict[str, np.ndarray]:
        count = sums[..., 0]
        return {"acc1": ratio(sums[..., 1], count),
                "acc5": ratio(sums[..., 2], count) if num_classes >= TOP_K else np.full(count.shape, math.nan),
                "mean_per_class_recall": nanmean(ratio(sums[..., 3 + num_classes:], sums[..., 3:3 + num_classes]))}

    binary = {"acc1": correct1, **({"acc5": correct5} if num_classes >= TOP_K else {})}
    return UnitStatistics(values, reduce, binary, seeds=1)


def outcomes(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
    """Return the per-sample outcomes of logits (N, C): target, top5 (sorted class indices), prediction
    (argmax, the first of tied maxima), num_classes."""
    top = logits.topk(min(TOP_K, logits.shape[1]), dim=1, largest=True, sorted=True).indices
    return {"target": targets.long().numpy().astype(np.int32), "top5": top.numpy().astype(np.int32),
            "prediction": logits.argmax(dim=1).numpy().astype(np.int32),
            "num_classes": np.array(logits.shape[1], dtype=np.int32)}


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Return acc1, acc5 (NaN with fewer than 5 classes) and mean_per_class_recall of logits (N, C)."""
    return score(outcomes(logits, torch.as_tensor(targets)))


def evaluate(model, data, params: dict, progress: bool = True) -> Outcome:
    """Return the zero-shot classification Outcome of model on data['eval'] (a classification dataset)."""
    dataset = data["eval"]
    classifier = ensemble_prompts(model, dataset.classes, dataset.templates, amp=params["amp"]).T.contiguous()
    image_features = encode_images(model, dataset, batch_size=params["batch_size"], num_workers=params["num_workers"],
                                   amp=params["amp"], progress=progress, desc="classification images", split="eval")
    logits = params["logit_scale"] * image_features @ classifier
    samples = outcomes(logits, torch.as_tensor(dataset.targets))
    return Outcome(score(samples), samples)


TASK = Task(
    name="zeroshot_classification", version=1,
    params={"batch_size": integer(256, 1), "num_workers": integer(0, 0), "amp": boolean(False),
            "logit_scale": number(100.0, above=0.0, doc="scales the logits; argmax does not change")},
    splits=("eval",), formats=("imagefolder", "clip_benchmark", "wds"), data_kind="classification",
    metrics=(Metric("acc1"), Metric("acc5"), Metric("mean_per_class_recall")),
    evaluate=evaluate, score=score, unit_statistics=unit_statistics,
    description="zero-shot classification by template-ensembled class prompts")
