"""Linear-probe semantic segmentation on a frozen backbone (DINOv2-style, PROTOCOLS.md section 6).

Last-layer patch tokens (after the final LayerNorm, before the projection) of every
training window are cached once; per seed, a BatchNorm2d + 1x1 conv probe is trained on
them with AdamW, its logits upsampled bilinearly to the window for a cross-entropy that
ignores 255. Evaluation slides windows over the validation images exactly as zero-shot
segmentation does (their features computed once for every seed) and reports mmseg's mIoU,
mAcc, aAcc and per-class IoU: the mean over seeds, each seed's and their spread.
Per-sample outcomes: per seed, image and class the intersection, union, predicted and label counts.
Version 2: `seeds` (a list) replaces `seed`; the loss is computed by matrix products (same value).
"""

from __future__ import annotations

import torch

from silc_eval.core.contract import Outcome, Task
from silc_eval.core.errors import UserError
from silc_eval.machinery import heads
from silc_eval.machinery.segmentation_metrics import (
    SEED_METRICS,
    SEGMENTATION_METRICS,
    seeded_counts_samples,
    segmentation_score,
    segmentation_unit_statistics,
)

NAME = "linear_segmentation"
FEATURE = "patch_tokens"  # what the probe reads, in the feature cache's key


def training_step(probe, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the cross-entropy (ignore 255) of the probe's upsampled logits on one mini-batch of windows."""
    return heads.window_loss(probe(features), labels)


def evaluate(model, data, params: dict, progress: bool = True) -> Outcome:
    """Return the Outcome of one linear probe per seed trained on data['train'] and evaluated on data['eval']."""
    train, dataset = data["train"], data["eval"]
    if train.class_names != dataset.class_names:
        raise UserError(f"{NAME}: the training split's classes differ from the evaluation classes; a linear probe "
                        f"needs the same classes (drop classes/num_classes from the 'train:' block)")
    cache = heads.cache_features(model, train, model.patch_tokens, FEATURE, params, progress)
    probes = []
    for seed in params["seeds"]:
        probe = heads.seeded_module(seed, lambda: heads.LinearProbe(cache.features.shape[-1],
                                                                    dataset.num_classes)).to(model.device)
        heads.train_head(probe, cache, training_step, params, model.device, seed, progress)
        probes.append(heads.with_float_input(probe))
    meters = heads.evaluate_heads(model, dataset, model.patch_tokens, FEATURE, probes, params, progress,
                                  desc="linear segmentation")
    samples = seeded_counts_samples(meters, dataset.class_names, params["seeds"])
    return Outcome(segmentation_score(samples), samples)


TASK = Task(
    name=NAME, version=2, params=heads.training_params(), splits=("train", "eval"), formats=("mmseg",),
    data_kind="segmentation", metrics=(*SEGMENTATION_METRICS, *SEED_METRICS), evaluate=evaluate,
    score=segmentation_score,
    unit_statistics=segmentation_unit_statistics,
    description="BatchNorm + 1x1 conv probe on frozen patch tokens")
