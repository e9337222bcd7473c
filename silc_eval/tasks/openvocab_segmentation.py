"""Open-vocabulary segmentation with a light trained decoder (ZegCLIP-style seen/unseen, benchmarks/PROTOCOLS.md 5).

Frozen projected patch embeddings (a dense variant, default vanilla) of the training
windows are cached once; a small residual decoder (MLP blocks or one transformer layer)
maps them, normalised, to embeddings compared by cosine with frozen text embeddings
times a learnt logit scale, trained by cross-entropy over the SEEN classes only: the
text matrix holds only seen classes and every pixel of an unseen class is ignored.
Evaluation slides windows over the validation images and classifies each pixel among
ALL classes (seen and unseen together); `seen_calibration` (default 0, off) subtracts a
constant from the seen classes' logits there (calibrated stacking against seen bias).

Splits: within one dataset, `unseen_classes` names the held-out classes; when the
declaration's `train` block has its own classes (cross-dataset transfer), every training
class is seen and each evaluation class whose first name is not a training class name
is unseen. Metrics: mIoU over all classes, mIoU_seen, mIoU_unseen, hIoU = 2SU/(S+U).
One decoder is trained per seed (`seeds`); the metrics are their mean, each seed's and their spread. Trained
decoders are kept in the feature cache beside the windows' features (machinery/heads.cached_fit): a run on the
same windows, seen-class text, parameters and seed reuses them.
Per-sample outcomes: per seed, image and class the four pixel counts, and which classes are unseen.
Version 2: `seeds` (a list) replaces `seed`; the loss is computed by matrix products (same value).
Version 3: positions off the training grid interpolated as zero-shot segmentation (version 2) does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from silc_eval.core.contract import Metric, Outcome, Task
from silc_eval.core.errors import UserError
from silc_eval.core.labels import IGNORE_INDEX
from silc_eval.core.params import choice, integer, number, str_list
from silc_eval.features import cache as feature_cache
from silc_eval.machinery import heads
from silc_eval.machinery.prompts import class_embeddings
from silc_eval.machinery.segmentation_metrics import (
    SEED_METRICS,
    SEGMENTATION_METRICS,
    per_class_metrics,
    scores_from_counts,
    seeded_counts_samples,
    seeded_score,
    segmentation_unit_statistics,
)
from silc_eval.models.dense import VARIANTS

NAME = "openvocab_segmentation"
VERSION = 3
PARAMS = {
    "unseen_classes": str_list([], doc="classes held out of training (within one dataset)"),
    "variant": choice("vanilla", VARIANTS, doc="dense variant of the frozen features"),
    "decoder": choice("mlp", tuple(heads.DECODERS)),
    "layers": integer(1, 0),
    "hidden_dim": integer(512, 1),
    "temperature": number(0.07, above=0.0, doc="initial 1 / logit scale of the decoder"),
    "seen_calibration": number(0.0, doc="subtracted from the seen classes' logits at evaluation"),
    **heads.training_params(min_steps=0, weight_decay=1e-2),
}


def name_key(name: str) -> str:
    """Return the form under which class names are compared across datasets (stripped, lower case)."""
    return name.strip().lower()


@dataclass(frozen=True)
class ClassSplit:
    """Which training classes train the decoder and which evaluation classes count as seen / unseen."""

    seen_train_ids: tuple[int, ...]
    seen_eval_ids: tuple[int, ...]
    unseen_eval_ids: tuple[int, ...]
    cross_dataset: bool


def split_classes(eval_classes: Sequence[Sequence[str]], train_classes: Sequence[Sequence[str]],
                  unseen_classes: Sequence[str]) -> ClassSplit:
    """Return the ClassSplit of an evaluation / training class list pair.

    Same classes: unseen_classes (first names of evaluation classes) are unseen, the rest
    seen. Different classes (cross-dataset): all training classes are seen, and an
    evaluation class is seen iff its first name matches a training class's first name.
    """
    if not isinstance(unseen_classes, (list, tuple)) or not all(isinstance(n, str) for n in unseen_classes):
        raise UserError(f"{NAME}: parameter unseen_classes must be a list of class names, got {unseen_classes!r}")
    eval_names = [names[0] for names in eval_classes]
    cross = [list(c) for c in eval_classes] != [list(c) for c in train_classes]
    if cross:
        if unseen_classes:
            raise UserError(f"{NAME}: unseen_classes must be empty when the training split has its own classes "
                            f"(cross-dataset: unseen = evaluation classes absent from the training classes)")
        train_keys = {name_key(names[0]) for names in train_classes}
        seen = tuple(i for i, name in enumerate(eval_names) if name_key(name) in train_keys)
        unseen = tuple(i for i, name in enumerate(eval_names) if name_key(name) not in train_keys)
        return ClassSplit(tuple(range(len(train_classes))), seen, unseen, True)
    unknown = [name for name in unseen_classes if name not in eval_names]
    if unknown:
        raise UserError(f"{NAME}: unseen class '{unknown[0]}' is not a class of the dataset; expected names among "
                        f"{', '.join(eval_names)}")
    held_out = set(unseen_classes)
    unseen = tuple(i for i, name in enumerate(eval_names) if name in held_out)
    seen = tuple(i for i in range(len(eval_names)) if i not in unseen)
    if not seen:
        raise UserError(f"{NAME}: every class is listed in unseen_classes; expected at least one seen class")
    return ClassSplit(seen, seen, unseen, False)


def seen_labels(labels: torch.Tensor, split: ClassSplit) -> torch.Tensor:
    """Return training labels (training class ids) as seen-class indices (uint8 below 255 seen classes, else
    int64); unseen pixels become 255.

    Raises RuntimeError if any pixel of a non-seen training class would keep a class index.
    """
    lookup = torch.full((max(IGNORE_INDEX + 1, int(labels.max()) + 1),), IGNORE_INDEX, dtype=torch.int64)
    lookup[list(split.seen_train_ids)] = torch.arange(len(split.seen_train_ids))
    remapped = lookup[labels.long()]
    dropped = ~torch.isin(labels.long(), torch.tensor(split.seen_train_ids))
    if (remapped[dropped] != IGNORE_INDEX).any():
        raise RuntimeError("open-vocabulary training labels kept pixels of a non-seen class")
    if len(split.seen_train_ids) < IGNORE_INDEX:  # every index fits beside 255: keep the cache at 1 byte a pixel
        return remapped.to(torch.uint8)
    return remapped


def training_step(decoder, features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor,
                  text_names: Sequence[str], unseen_names: Sequence[str]) -> torch.Tensor:
    """Return the seen-class cross-entropy of one mini-batch (labels index the rows of text, 255 ignored).

    Raises RuntimeError if an unseen class's text or a label outside the seen rows reached it.
    """
    leaked = {name_key(n) for n in text_names} & {name_key(n) for n in unseen_names}
    if leaked or len(text_names) != text.shape[0]:
        raise RuntimeError(f"unseen class text reached the decoder's training step: {sorted(leaked)}")
    valid = labels[labels != IGNORE_INDEX]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= text.shape[0]):
        raise RuntimeError("a label outside the seen classes reached the decoder's training step")
    return heads.window_loss(decoder(features, text), labels)


def _nanmean(values: np.ndarray) -> float | None:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else None


def score(samples: Mapping[str, np.ndarray], params: Mapping | None = None) -> dict[str, float | None]:
    """Return hIoU, mIoU_seen, mIoU_unseen, mIoU, mAcc, aAcc and IoU.<class> (None where undefined) from
    per-image counts and the unseen mask (with per-seed counts: their mean over seeds, each seed's and their
    spread, see seeded_score).

    mIoU_seen / mIoU_unseen are NaN-means of the per-class IoU over each subset; hIoU is
    their harmonic mean 2SU/(S+U) (0 when both are 0, None when either is None).
    """
    if np.asarray(samples["intersect"]).ndim == 3:
        return seeded_score(samples, score)
    scores = scores_from_counts(samples)
    iou, unseen = np.array(scores["per_class_iou"], dtype=np.float64), np.asarray(samples["unseen"], dtype=bool)
    seen_mean, unseen_mean = _nanmean(iou[~unseen]), _nanmean(iou[unseen])
    if seen_mean is None or unseen_mean is None:
        harmonic = None
    else:
        harmonic = 0.0 if seen_mean + unseen_mean == 0 else 2 * seen_mean * unseen_mean / (seen_mean + unseen_mean)
    overall = per_class_metrics(scores, [str(n) for n in samples["class_names"]])
    return {"hIoU": harmonic, "mIoU_seen": seen_mean, "mIoU_unseen": unseen_mean, **overall}


def evaluate(model, data, params: dict, progress: bool = True) -> Outcome:
    """Return the Outcome of one decoder per seed trained on the seen classes of data['train'], evaluated on
    data['eval']."""
    train, dataset = data["train"], data["eval"]
    split = split_classes(dataset.classes, train.classes, params["unseen_classes"])
    device, amp = model.device, params["amp"]
    feature = f"dense:{params['variant']}"

    def feature_fn(windows: torch.Tensor) -> torch.Tensor:
        return model.dense_features(windows, params["variant"])

    cache = heads.cache_features(model, train, feature_fn, feature, params, progress)
    cache.labels = seen_labels(cache.labels, split)
    seen_classes = [train.classes[i] for i in split.seen_train_ids]
    text_names = [names[0] for names in seen_classes]
    unseen_names = [dataset.class_names[i] for i in split.unseen_eval_ids]
    train_text = class_embeddings(model, seen_classes, train.templates, amp).to(device)
    eval_text = class_embeddings(model, dataset.classes, dataset.templates, amp).to(device)
    offsets = torch.zeros(dataset.num_classes, device=device)
    offsets[list(split.seen_eval_ids)] = float(params["seen_calibration"])
    decoders = []
    text_sha256 = feature_cache.content_sha256(train_text)
    for seed in params["seeds"]:
        decoder = heads.seeded_module(seed, lambda: heads.OpenVocabDecoder(
            cache.features.shape[-1], params["hidden_dim"], params["layers"], params["decoder"],
            params["temperature"])).to(device)

        def fit(decoder=decoder, seed=seed) -> dict[str, float]:
            losses = heads.train_head(decoder, cache, lambda head, features, labels: training_step(
                head, features, labels, train_text, text_names, unseen_names), params, device, seed, progress)
            return {"final_loss": losses[-1]} if losses else {}

        identity = {"task": f"{NAME} v{VERSION}", "params": {k: v for k, v in params.items() if k != "seeds"},
                    "seed": seed, "text_sha256": text_sha256}  # a seed's decoder whatever other seeds run beside it
        heads.cached_fit(decoder, cache, identity, fit)
        decoders.append(heads.with_float_input(
            lambda features, decoder=decoder: decoder(features, eval_text) - offsets[:, None, None]))
    meters = heads.evaluate_heads(model, dataset, feature_fn, feature, decoders, params, progress,
                                  desc="open-vocabulary segmentation")
    samples = seeded_counts_samples(meters, dataset.class_names, params["seeds"])
    samples["unseen"] = np.isin(np.arange(dataset.num_classes), split.unseen_eval_ids)
    return Outcome(score(samples), samples)


TASK = Task(
    name=NAME, version=VERSION, params=PARAMS, splits=("train", "eval"), formats=("mmseg",), data_kind="segmentation",
    metrics=(Metric("hIoU"), Metric("mIoU_seen"), Metric("mIoU_unseen"), *SEGMENTATION_METRICS, *SEED_METRICS),
    evaluate=evaluate, score=score, unit_statistics=segmentation_unit_statistics,
    description="light decoder on frozen dense features, trained on seen classes, scored on seen and unseen")
