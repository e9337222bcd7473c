"""Linear-probe semantic segmentation on a frozen backbone (DINOv2-style, PROTOCOLS.md section 6).

Last-layer patch tokens (after the final LayerNorm, before the projection) of every
training window are cached once; a BatchNorm2d + 1x1 conv probe is trained on them with
AdamW, its logits upsampled bilinearly to the window for a cross-entropy that ignores
255. Evaluation slides windows over the validation images exactly as zero-shot
segmentation does and reports mmseg's mIoU, mAcc, aAcc and per-class IoU.
"""

from __future__ import annotations

import torch

from silc_eval.core.errors import UserError
from silc_eval.models.dense import patch_tokens
from silc_eval.machinery import heads
from silc_eval.tasks.zeroshot_segmentation import metrics_from_meter

DEFAULT_PARAMS = {"short_side": 336, "window": 224, "stride": 112, "steps": 2000, "train_batch_size": 16,
                  "lr": 1e-3, "weight_decay": 1e-4, "seed": 0, "max_train_images": None, "batch_size": 32,
                  "num_workers": 0, "amp": False}
METRICS = ("mIoU", "mAcc", "aAcc")
DATASET_FORMATS = ("mmseg",)
TASK = "linear_segmentation"


def training_step(probe, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the cross-entropy (ignore 255) of the probe's upsampled logits on one mini-batch of windows."""
    return heads.window_loss(probe(features), labels)


def evaluate(model, dataset, params: dict, progress: bool = True) -> dict[str, float | None]:
    """Return mIoU, mAcc, aAcc (fractions) and per-class IoU of a linear probe trained on the training split."""
    heads.check_training_params(params, TASK)
    train = heads.train_split(dataset)
    if train.class_names != dataset.class_names:
        raise UserError(f"{TASK}: the training split's classes differ from the evaluation classes; a linear probe "
                        f"needs the same classes (drop classes/num_classes from the 'train:' block)")
    visual = model.model.visual

    def feature_fn(windows: torch.Tensor) -> torch.Tensor:
        return patch_tokens(visual, windows)[0]

    cache = heads.cache_features(model, train, feature_fn, params, progress)
    probe = heads.seeded_module(params["seed"], lambda: heads.LinearProbe(cache.features.shape[-1],
                                                                          dataset.num_classes)).to(model.device)
    heads.train_head(probe, cache, lambda head, features, labels: training_step(head, features, labels), params,
                     model.device, progress)
    window_fn = heads.frozen_window_fn(model, feature_fn, probe, params["amp"])
    meter = heads.evaluate_head(model, dataset, window_fn, params, progress, desc="linear segmentation")
    return metrics_from_meter(meter, dataset.class_names)
