"""Zero-shot classification with template ensembling (PROTOCOLS.md section 1, CLIP_benchmark conventions)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from silc_eval.features import encode_images, encode_texts

DEFAULT_PARAMS = {"batch_size": 256, "num_workers": 0, "amp": False, "logit_scale": 100.0}
METRICS = ("acc1", "acc5", "mean_per_class_recall")
DATASET_FORMATS = ("imagefolder", "clip_benchmark", "wds")


def class_embeddings(model, classnames: Sequence[str], templates: Sequence[str], amp: bool = False) -> torch.Tensor:
    """Return the zero-shot classifier (D, C): per class, the normalised mean of normalised prompt embeddings."""
    prompts = [template.format(c=name) for name in classnames for template in templates]
    embeddings = encode_texts(model, prompts, amp=amp).view(len(classnames), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1).T.contiguous()


def topk_accuracies(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Return, per k, the fraction of rows whose target is among the k highest logits (NaN if k > classes).

    One sorted top-k serves every k, so tied logits rank the same way for acc1 and acc5.
    """
    max_k = min(max(ks), logits.shape[1])
    correct = logits.topk(max_k, dim=1, largest=True, sorted=True).indices == targets[:, None]
    return {k: correct[:, :k].any(dim=1).float().mean().item() if k <= logits.shape[1] else math.nan for k in ks}


def mean_per_class_recall(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Return balanced accuracy: the mean over classes present in targets of their recall."""
    classes = targets.unique()
    recalls = [(predictions[targets == c] == c).float().mean() for c in classes]
    return torch.stack(recalls).mean().item()


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Return acc1, acc5 (NaN with fewer than 5 classes) and mean_per_class_recall for logits (N, C)."""
    targets = targets.long()
    accuracies = topk_accuracies(logits, targets, (1, 5))
    return {
        "acc1": accuracies[1],
        "acc5": accuracies[5],
        "mean_per_class_recall": mean_per_class_recall(logits.argmax(dim=1), targets),
    }


def evaluate(model, dataset, params: dict, progress: bool = True) -> dict[str, float]:
    """Return the zero-shot classification metrics of model on an ImageFolderClassification dataset."""
    classifier = class_embeddings(model, dataset.classes, dataset.templates, amp=params["amp"])
    image_features = encode_images(model, dataset, batch_size=params["batch_size"], num_workers=params["num_workers"],
                                   amp=params["amp"], progress=progress, desc="classification images")
    logits = params["logit_scale"] * image_features @ classifier
    return classification_metrics(logits, torch.as_tensor(dataset.targets))
