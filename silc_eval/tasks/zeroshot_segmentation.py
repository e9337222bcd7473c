"""Training-free zero-shot semantic segmentation (the SCLIP / ClearCLIP / NACLIP protocol, PROTOCOLS.md 4).

Dense patch features of a chosen last-block variant are compared with template-ensembled
text embeddings of every class name (synonyms and background words are extra queries);
window logits are slid, averaged and upsampled to the original image; the logit scale and
a softmax over all queries give probabilities, each class keeps the max over its names,
classes covering less than area_thd of the foreground are zeroed, and pixels whose best
probability is below prob_thd become class 0. The metric is mmseg's IoUMetric.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from silc_eval.core import distributed
from silc_eval.features import autocast_context, encode_texts
from silc_eval.models.dense import check_variant, dense_features
from silc_eval.machinery.windows import image_normalization, prepare_image, slide_logits
from silc_eval.machinery.segmentation_metrics import SegmentationMeter

DEFAULT_PARAMS = {"variant": "sclip", "short_side": 336, "window": 224, "stride": 112, "logit_scale": 40.0,
                  "prob_thd": 0.0, "area_thd": None, "batch_size": 32, "num_workers": 0, "amp": False}
METRICS = ("mIoU", "mAcc", "aAcc")
DATASET_FORMATS = ("mmseg",)


def query_embeddings(model, classes: Sequence[Sequence[str]], templates: Sequence[str],
                     amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (text embeddings (Q, E) of every name of every class, class index (Q,) of each query).

    Each name's embedding is the normalised mean of its normalised template prompts.
    """
    names = [name for names_of_class in classes for name in names_of_class]
    query_class = torch.tensor([c for c, names_of_class in enumerate(classes) for _ in names_of_class])
    prompts = [template.format(c=name) for name in names for template in templates]
    embeddings = encode_texts(model, prompts, amp=amp).view(len(names), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1), query_class


def class_probabilities(logits: torch.Tensor, query_class: torch.Tensor, num_classes: int,
                        logit_scale: float) -> torch.Tensor:
    """Return (C, H, W) probabilities from query cosine logits (Q, H, W): softmax over all queries of
    logit_scale * logits, then per class the max over its queries."""
    probs = (logits * logit_scale).softmax(dim=0)
    if len(query_class) == num_classes:
        return probs
    out = probs.new_full((num_classes, *probs.shape[1:]), -math.inf)
    index = query_class.to(probs.device)[:, None, None].expand_as(probs)
    return out.scatter_reduce(0, index, probs, reduce="amax", include_self=True)


def predict_classes(probs: torch.Tensor, prob_thd: float = 0.0, area_thd: float | None = None) -> torch.Tensor:
    """Return the (H, W) class map of (C, H, W) probabilities with SCLIP's background rules.

    area_thd: classes 1.. whose argmax area is below area_thd x the area of all classes 1..
    are zeroed before the argmax; prob_thd: pixels whose best probability is below it get 0.
    """
    if area_thd:
        winners = probs.argmax(dim=0)
        area = torch.bincount(winners.flatten(), minlength=probs.shape[0])[1:].to(probs.dtype)
        keep = (area > area_thd * area.sum()).to(probs.dtype)
        probs = probs.clone()
        probs[1:] *= keep[:, None, None]
    best, prediction = probs.max(dim=0)
    if prob_thd:
        prediction[best < prob_thd] = 0
    return prediction


def make_window_fn(model, text: torch.Tensor, variant: str, amp: bool):
    """Return a function mapping windows (N, 3, h, w) to cosine logits (N, Q, gh, gw) of the variant."""
    visual, text = model.model.visual, text.to(model.device)

    def window_fn(windows: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast_context(model.device, amp):
            features, _ = dense_features(visual, windows, variant)
            features = F.normalize(features.float(), dim=-1)
            return torch.einsum("bhwe,qe->bqhw", features, text)

    return window_fn


def slide_images(model, images: Sequence[torch.Tensor], window_fn, params: dict) -> list[torch.Tensor]:
    """Return per uint8 image (3, H, W) its window-averaged logits (Q, H, W) at the original size."""
    mean, std = image_normalization(model)
    prepared = [prepare_image(image.to(model.device), params["short_side"], mean, std) for image in images]
    return slide_logits(prepared, window_fn, params["window"], params["stride"], params["batch_size"],
                        output_sizes=[tuple(image.shape[-2:]) for image in images])


def zeroshot_postprocess(query_class: torch.Tensor, num_classes: int, params: dict):
    """Return the function mapping query logits (Q, H, W) to a class map with SCLIP's background rules."""
    def postprocess(logits: torch.Tensor) -> torch.Tensor:
        probs = class_probabilities(logits, query_class, num_classes, params["logit_scale"])
        return predict_classes(probs, params["prob_thd"], params["area_thd"])

    return postprocess


def segment(model, images: Sequence[torch.Tensor], text: torch.Tensor, query_class: torch.Tensor,
            num_classes: int, params: dict) -> list[torch.Tensor]:
    """Return the (H, W) predicted class maps of uint8 images (3, H, W) at their original sizes."""
    window_fn = make_window_fn(model, text, params["variant"], params["amp"])
    postprocess = zeroshot_postprocess(query_class, num_classes, params)
    return [postprocess(logits) for logits in slide_images(model, images, window_fn, params)]


def metrics_from_meter(meter: SegmentationMeter, class_names: Sequence[str]) -> dict[str, float | None]:
    """Return mIoU, mAcc, aAcc and one 'IoU.<class>' entry per class (None where the class is absent)."""
    result = meter.compute()
    metrics: dict[str, float | None] = {"mIoU": result["mIoU"], "mAcc": result["mAcc"], "aAcc": result["aAcc"]}
    for name, iou in zip(class_names, result["per_class_iou"]):
        metrics[f"IoU.{name}"] = None if math.isnan(iou) else iou
    return metrics


def image_batches(dataset, batch_size: int, num_workers: int) -> DataLoader:
    """Return a loader yielding lists of (image, label, index) of a SegmentationDataset, in order."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=lambda items: items)


def sum_over_ranks(meter: SegmentationMeter) -> SegmentationMeter:
    """Return meter after adding every rank's confusion counts into it (exact integer sums; no-op for one process)."""
    meter.matrix = distributed.all_reduce_sum(meter.matrix)
    meter.stray_label = distributed.all_reduce_sum(meter.stray_label)
    return meter


def slid_meter(model, dataset, window_fn, postprocess, params: dict, progress: bool = True,
               desc: str = "segmentation") -> SegmentationMeter:
    """Return the SegmentationMeter of postprocess(logits) over every image of dataset, logits slid by window_fn.

    Under torchrun each rank takes its block of whole image batches; the meters are summed.
    """
    meter = SegmentationMeter(dataset.num_classes, dataset.ignore_index)
    images_per_step = max(1, params["batch_size"] // 4)
    shard = distributed.shard_dataset(dataset, images_per_step)
    for items in tqdm(image_batches(shard, images_per_step, params["num_workers"]), disable=not progress,
                      desc=desc, leave=False):
        logits = slide_images(model, [image for image, _, _ in items], window_fn, params)
        for image_logits, (_, label, _) in zip(logits, items):
            meter.update(postprocess(image_logits).cpu(), label)
    return sum_over_ranks(meter)


def evaluate(model, dataset, params: dict, progress: bool = True) -> dict[str, float | None]:
    """Return mIoU, mAcc, aAcc (fractions) and per-class IoU of zero-shot segmentation on a SegmentationDataset."""
    check_variant(params["variant"])
    text, query_class = query_embeddings(model, dataset.classes, dataset.templates, amp=params["amp"])
    window_fn = make_window_fn(model, text, params["variant"], params["amp"])
    postprocess = zeroshot_postprocess(query_class, dataset.num_classes, params)
    meter = slid_meter(model, dataset, window_fn, postprocess, params, progress, desc="zero-shot segmentation")
    return metrics_from_meter(meter, dataset.class_names)
