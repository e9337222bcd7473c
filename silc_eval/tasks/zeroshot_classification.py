"""Zero-shot classification with template ensembling (benchmarks/PROTOCOLS.md section 1, CLIP_benchmark conventions).

Per-sample outcomes: per image its target, its top-5 predicted classes (one sorted torch.topk,
fewer columns when the dataset has fewer than 5 classes) and its argmax prediction. acc1 and
acc5 are read off the top-5, mean per-class recall off the argmax, as CLIP_benchmark computes
them; the two first choices differ only between exactly tied logits.

DataComp's extra metrics, computed as its WILDS-based evaluators compute them:
- with `group_column` (a column of the samples' metadata, e.g. the region of each image), `acc1_worst_group`
  and `acc5_worst_group`: the lowest accuracy over the groups that have images (FMoW's acc_worst_region,
  GeoDE's acc_wg, Dollar Street's acc_top5_wg); the outcomes then carry each image's `group`;
- with `f1_macro`, the macro F1 of the argmax over the classes present in the targets (scikit-learn's
  f1_score with labels = those classes; iWildCam's F1-macro_all).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from silc_eval.core.contract import Metric, Outcome, Task
from silc_eval.core.errors import UserError
from silc_eval.core.params import boolean, integer, number
from silc_eval.core.resampling import UnitStatistics, nanmean, ratio
from silc_eval.features import encode_images
from silc_eval.machinery.prompts import ensemble_prompts

TOP_K = 5


def mean_per_class_recall(predictions, targets) -> float:
    """Return balanced accuracy: the mean over classes present in targets of their recall."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    return float(np.mean([(predictions[targets == c] == c).mean() for c in np.unique(targets)]))


def f1_macro(predictions, targets) -> float:
    """Return the mean over classes present in targets of their F1 = 2 TP / (2 TP + FP + FN)."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    scores = []
    for c in np.unique(targets):
        tp = np.sum((predictions == c) & (targets == c))
        scores.append(2 * tp / (2 * tp + np.sum((predictions == c) & (targets != c)) + np.sum(targets == c) - tp))
    return float(np.mean(scores))


def worst_group(correct, groups) -> float:
    """Return the lowest mean of correct over the groups that have samples."""
    correct, groups = np.asarray(correct, dtype=np.float64), np.asarray(groups)
    return float(min(correct[groups == g].mean() for g in np.unique(groups)))


def score(samples: Mapping[str, np.ndarray], params: Mapping | None = None) -> dict[str, float]:
    """Return acc1, acc5 (NaN with fewer than 5 classes) and mean_per_class_recall of the per-sample outcomes, and
    f1_macro (when params ask for it) and acc1/acc5_worst_group (when the outcomes carry groups)."""
    target, top = np.asarray(samples["target"]), np.asarray(samples["top5"])
    correct = top == target[:, None]
    five = int(samples["num_classes"]) >= TOP_K
    metrics = {
        "acc1": float(correct[:, 0].mean()),
        "acc5": float(correct[:, :TOP_K].any(axis=1).mean()) if five else math.nan,
        "mean_per_class_recall": mean_per_class_recall(samples["prediction"], target),
    }
    if params and params.get("f1_macro"):
        metrics["f1_macro"] = f1_macro(samples["prediction"], target)
    if "group" in samples:
        metrics["acc1_worst_group"] = worst_group(correct[:, 0], samples["group"])
        metrics["acc5_worst_group"] = worst_group(correct[:, :TOP_K].any(axis=1), samples["group"]) if five else math.nan
    return metrics


def _grouped_statistics(target, prediction, correct1, correct5, group, num_classes, f1: bool):
    """Return (sparse per-image statistics, reduce) of f1_macro (TP, FN and FP per class) and of the worst-group
    accuracies (count, correct@1, correct@5 per group), either or both; reduce maps summed statistics to them."""
    from scipy import sparse

    n, columns, data, blocks = len(target), [], [], {}

    def block(name, width, cols, values):
        start = sum(w for _, w in blocks.values())
        blocks[name] = start, width
        columns.append(start + cols)
        data.append(values)

    hit = prediction == target
    if f1:
        block("tp", num_classes, target, hit)
        block("fn", num_classes, target, ~hit)
        block("fp", num_classes, prediction, ~hit)
    if group is not None:
        groups = int(group.max()) + 1
        block("count", groups, group, np.ones(n, bool))
        block("correct1", groups, group, correct1)
        block("correct5", groups, group, correct5)
    width = sum(w for _, w in blocks.values())
    rows = np.tile(np.arange(n), len(columns))
    values = sparse.csr_matrix((np.concatenate(data).astype(np.float64), (rows, np.concatenate(columns))),
                               shape=(n, width))

    def part(sums, name):
        start, w = blocks[name]
        return sums[..., start:start + w]

    def reduce(sums: np.ndarray) -> dict[str, np.ndarray]:
        metrics = {}
        if f1:
            tp, fn, fp = part(sums, "tp"), part(sums, "fn"), part(sums, "fp")
            present = (tp + fn) > 0
            f1_c = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-300), np.nan)
            metrics["f1_macro"] = nanmean(f1_c)
        if group is not None:
            count = part(sums, "count")
            for name, k in (("acc1_worst_group", "correct1"), ("acc5_worst_group", "correct5")):
                rate = np.where(count > 0, part(sums, k) / np.maximum(count, 1e-300), np.inf)
                metrics[name] = rate.min(axis=-1)
            if num_classes < TOP_K:
                metrics["acc5_worst_group"] = np.full(count.shape[:-1], math.nan)
        return metrics

    return values, reduce


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
    f1, group = bool(params and params.get("f1_macro")), samples.get("group")
    if not f1 and group is None:
        return UnitStatistics(values, reduce, binary, seeds=1)
    extra, extra_reduce = _grouped_statistics(target, np.asarray(samples["prediction"]), correct1, correct5,
                                              None if group is None else np.asarray(group), num_classes, f1)
    split = values.shape[1]

    def reduce_all(sums: np.ndarray) -> dict[str, np.ndarray]:
        return {**reduce(sums[..., :split]), **extra_reduce(sums[..., split:])}

    return UnitStatistics(sparse.hstack([values, extra]).tocsr(), reduce_all, binary, seeds=1)


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
    if params["group_column"] is not None:
        metadata = np.asarray(dataset.metadata)
        if params["group_column"] >= metadata.shape[1]:
            raise UserError(f"group_column {params['group_column']} is beyond the {metadata.shape[1]} metadata fields "
                            f"of the dataset; expected 0..{metadata.shape[1] - 1}")
        groups = metadata[:, params["group_column"]]
        if groups.min() < 0:
            raise UserError(f"metadata column {params['group_column']} holds negative values; expected group indices")
        samples["group"] = groups.astype(np.int32)
    return Outcome(score(samples, params), samples)


TASK = Task(
    name="zeroshot_classification", version=1,
    params={"batch_size": integer(256, 1), "num_workers": integer(0, 0), "amp": boolean(False),
            "logit_scale": number(100.0, above=0.0, doc="scales the logits; argmax does not change"),
            "group_column": integer(None, 0, nullable=True,
                                    doc="metadata column grouping the images for acc1/acc5_worst_group (DataComp)"),
            "f1_macro": boolean(False, doc="also report macro F1 over the classes present (iWildCam in DataComp)")},
    splits=("eval",), formats=("imagefolder", "clip_benchmark", "wds"), data_kind="classification",
    metrics=(Metric("acc1"), Metric("acc5"), Metric("mean_per_class_recall"), Metric("f1_macro"),
             Metric("acc1_worst_group"), Metric("acc5_worst_group")),
    evaluate=evaluate, score=score, unit_statistics=unit_statistics,
    description="zero-shot classification by template-ensembled class prompts")
