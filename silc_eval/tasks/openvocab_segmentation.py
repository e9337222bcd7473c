"""Open-vocabulary segmentation with a light trained decoder (ZegCLIP-style seen/unseen, PROTOCOLS.md 5).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from silc_eval.core.errors import UserError
from silc_eval.models.dense import check_variant, dense_features
from silc_eval.machinery import heads
from silc_eval.machinery.segmentation_metrics import IGNORE_INDEX, SegmentationMeter
from silc_eval.tasks.zeroshot_segmentation import metrics_from_meter, query_embeddings

DEFAULT_PARAMS = {"unseen_classes": [], "variant": "vanilla", "decoder": "mlp", "layers": 1, "hidden_dim": 512,
                  "temperature": 0.07, "seen_calibration": 0.0, "short_side": 336, "window": 224, "stride": 112,
                  "steps": 2000, "train_batch_size": 16, "lr": 1e-3, "weight_decay": 1e-2, "seed": 0,
                  "max_train_images": None, "batch_size": 32, "num_workers": 0, "amp": False}
METRICS = ("hIoU", "mIoU_seen", "mIoU_unseen", "mIoU", "mAcc", "aAcc")
DATASET_FORMATS = ("mmseg",)
TASK = "openvocab_segmentation"


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
        raise UserError(f"{TASK}: parameter unseen_classes must be a list of class names, got {unseen_classes!r}")
    eval_names = [names[0] for names in eval_classes]
    cross = [list(c) for c in eval_classes] != [list(c) for c in train_classes]
    if cross:
        if unseen_classes:
            raise UserError(f"{TASK}: unseen_classes must be empty when the training split has its own classes "
                            f"(cross-dataset: unseen = evaluation classes absent from the training classes)")
        train_keys = {name_key(names[0]) for names in train_classes}
        seen = tuple(i for i, name in enumerate(eval_names) if name_key(name) in train_keys)
        unseen = tuple(i for i, name in enumerate(eval_names) if name_key(name) not in train_keys)
        return ClassSplit(tuple(range(len(train_classes))), seen, unseen, True)
    unknown = [name for name in unseen_classes if name not in eval_names]
    if unknown:
        raise UserError(f"{TASK}: unseen class '{unknown[0]}' is not a class of the dataset; expected names among "
                        f"{', '.join(eval_names)}")
    held_out = set(unseen_classes)
    unseen = tuple(i for i, name in enumerate(eval_names) if name in held_out)
    seen = tuple(i for i in range(len(eval_names)) if i not in unseen)
    if not seen:
        raise UserError(f"{TASK}: every class is listed in unseen_classes; expected at least one seen class")
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


def class_text(model, classes: Sequence[Sequence[str]], templates: Sequence[str], amp: bool = False) -> torch.Tensor:
    """Return one normalised text embedding per class (C, E): the mean of its names' template-ensembled ones."""
    queries, query_class = query_embeddings(model, classes, templates, amp=amp)
    sums = torch.zeros(len(classes), queries.shape[1]).index_add_(0, query_class, queries)
    return torch.nn.functional.normalize(sums, dim=-1)


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


def _nanmean(values: torch.Tensor) -> float | None:
    mean = float(torch.nanmean(values)) if values.numel() else math.nan
    return None if math.isnan(mean) else mean


def seen_unseen_metrics(meter: SegmentationMeter, class_names: Sequence[str], seen_ids: Sequence[int],
                        unseen_ids: Sequence[int]) -> dict[str, float | None]:
    """Return hIoU, mIoU_seen, mIoU_unseen, mIoU, mAcc, aAcc and IoU.<class> (None where undefined).

    mIoU_seen / mIoU_unseen are NaN-means of the per-class IoU over each subset; hIoU is
    their harmonic mean 2SU/(S+U) (0 when both are 0, None when either is None).
    """
    overall = metrics_from_meter(meter, class_names)
    iou = torch.tensor(meter.compute()["per_class_iou"], dtype=torch.float64)
    seen, unseen = _nanmean(iou[list(seen_ids)]), _nanmean(iou[list(unseen_ids)])
    if seen is None or unseen is None:
        harmonic = None
    else:
        harmonic = 0.0 if seen + unseen == 0 else 2 * seen * unseen / (seen + unseen)
    return {"hIoU": harmonic, "mIoU_seen": seen, "mIoU_unseen": unseen, **overall}


def _check_params(params: dict) -> None:
    heads.check_training_params(params, TASK, min_steps=0)
    check_variant(params["variant"])
    if params["decoder"] not in heads.DECODERS:
        raise UserError(f"{TASK}: unknown decoder '{params['decoder']}'; expected one of {', '.join(heads.DECODERS)}")
    for key in ("layers", "hidden_dim"):
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "layers" else 1):
            raise UserError(f"{TASK}: parameter {key} must be a {'non-negative' if key == 'layers' else 'positive'} "
                            f"integer, got {value!r}")
    if not isinstance(params["temperature"], (int, float)) or params["temperature"] <= 0:
        raise UserError(f"{TASK}: parameter temperature must be a positive number, got {params['temperature']!r}")
    if isinstance(params["seen_calibration"], bool) or not isinstance(params["seen_calibration"], (int, float)):
        raise UserError(f"{TASK}: parameter seen_calibration must be a number, got {params['seen_calibration']!r}")


def evaluate(model, dataset, params: dict, progress: bool = True) -> dict[str, float | None]:
    """Return hIoU, mIoU_seen, mIoU_unseen, mIoU, mAcc, aAcc (fractions) and per-class IoU of a decoder
    trained on the seen classes of the dataset's training split, evaluated on the dataset."""
    _check_params(params)
    train = heads.train_split(dataset)
    split = split_classes(dataset.classes, train.classes, params["unseen_classes"])
    visual, device, amp = model.model.visual, model.device, params["amp"]

    def feature_fn(windows: torch.Tensor) -> torch.Tensor:
        return dense_features(visual, windows, params["variant"])[0]

    cache = heads.cache_features(model, train, feature_fn, params, progress)
    cache.labels = seen_labels(cache.labels, split)
    seen_classes = [train.classes[i] for i in split.seen_train_ids]
    text_names = [names[0] for names in seen_classes]
    unseen_names = [dataset.class_names[i] for i in split.unseen_eval_ids]
    train_text = class_text(model, seen_classes, train.templates, amp).to(device)
    decoder = heads.seeded_module(params["seed"], lambda: heads.OpenVocabDecoder(
        cache.features.shape[-1], params["hidden_dim"], params["layers"], params["decoder"],
        params["temperature"])).to(device)
    heads.train_head(decoder, cache,
                     lambda head, features, labels: training_step(head, features, labels, train_text, text_names,
                                                                  unseen_names),
                     params, device, progress)
    eval_text = class_text(model, dataset.classes, dataset.templates, amp).to(device)
    offsets = torch.zeros(dataset.num_classes, device=device)
    offsets[list(split.seen_eval_ids)] = float(params["seen_calibration"])
    window_fn = heads.frozen_window_fn(
        model, feature_fn, lambda features: decoder(features, eval_text) - offsets[:, None, None], amp)
    meter = heads.evaluate_head(model, dataset, window_fn, params, progress, desc="open-vocabulary segmentation")
    return seen_unseen_metrics(meter, dataset.class_names, split.seen_eval_ids, split.unseen_eval_ids)
