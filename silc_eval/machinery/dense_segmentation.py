"""Dense prediction over a segmentation dataset, shared by the zero-shot and the trained-head tasks.

- window functions: windows (N, 3, h, w) -> logits (N, Q, gh, gw), from the model's dense
  features (model.dense_features) compared by cosine with text embeddings;
- slide_images: the sliding-window logits of raw images at their original size (windows.py);
- SCLIP's zero-shot post-processing: logit scale, softmax over every name, max over a class's
  names, the area and probability thresholds that make background (benchmarks/PROTOCOLS.md section 4.3);
- image_batches: a segmentation dataset in ordered batches of (image, label, index).
Tasks slide over cached window features instead (window_features.py).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from silc_eval.features import OrderedLoader, autocast_context
from silc_eval.machinery.pamr import pamr_refine
from silc_eval.machinery.windows import normalization_tensors, prepare_image, slide_logits

WindowFn = Callable[[torch.Tensor], torch.Tensor]  # windows (N, 3, h, w) -> logits or features (N, ..., gh, gw)


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


def class_map(scores: torch.Tensor) -> torch.Tensor:
    """Return the (H, W) index of the highest of (C, H, W) scores, the first of tied maxima: argmax(dim=0), through
    max(dim=0), which a CPU computes about three times faster over the leading dimension."""
    return scores.max(dim=0).indices


def predict_classes(probs: torch.Tensor, prob_thd: float = 0.0, area_thd: float | None = None) -> torch.Tensor:
    """Return the (H, W) class map of (C, H, W) probabilities with SCLIP's background rules.

    area_thd: classes 1.. whose argmax area is below area_thd x the area of all classes 1..
    are zeroed before the argmax; prob_thd: pixels whose best probability is below it get 0.
    """
    if area_thd:
        winners = class_map(probs)
        area = torch.bincount(winners.flatten(), minlength=probs.shape[0])[1:].to(probs.dtype)
        keep = (area > area_thd * area.sum()).to(probs.dtype)
        probs = probs.clone()
        probs[1:] *= keep[:, None, None]
    best, prediction = probs.max(dim=0)
    if prob_thd:
        prediction[best < prob_thd] = 0
    return prediction


def cosine_logits(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Return the cosine logits (N, Q, gh, gw) of dense features (N, gh, gw, E) with normalised text rows (Q, E)."""
    return torch.einsum("bhwe,qe->bqhw", F.normalize(features.float(), dim=-1), text)


def text_window_fn(model, text: torch.Tensor, variant: str, amp: bool) -> WindowFn:
    """Return a function mapping windows (N, 3, h, w) to cosine logits (N, Q, gh, gw) of a dense variant."""
    text = text.to(model.device)

    def window_fn(windows: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast_context(model.device, amp):
            return cosine_logits(model.dense_features(windows, variant), text)

    return window_fn


def slide_images(model, images: Sequence[torch.Tensor], window_fn: WindowFn, params: dict) -> list[torch.Tensor]:
    """Return per uint8 image (3, H, W) its window-averaged logits (Q, H, W) at the original size, refined by PAMR
    when params pamr_steps > 0 (refine_with_prepared)."""
    mean, std = normalization_tensors(model)
    prepared = [prepare_image(image.to(model.device), params["short_side"], mean, std, params["resize"])
                for image in images]
    logits = slide_logits(prepared, window_fn, params["window"], params["stride"], params["batch_size"],
                          output_sizes=[tuple(image.shape[-2:]) for image in images])
    if not params.get("pamr_steps", 0):
        return logits
    return [refine_with_prepared(x, one, params) for x, one in zip(prepared, logits)]


def refine_with_prepared(prepared: torch.Tensor, logits: torch.Tensor, params: dict) -> torch.Tensor:
    """Return logits (Q, H, W) refined by params pamr_steps rounds of PAMR, as NACLIP does: guided by the network's
    input image (prepared: resized and normalised by prepare_image) resized bilinearly to the logits' size."""
    guide = F.interpolate(prepared[None].float(), size=tuple(logits.shape[-2:]), mode="bilinear", align_corners=False)
    return pamr_refine(guide, logits[None], params["pamr_steps"], params["pamr_dilations"])[0]


def pamr_refiner(model, params: dict) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """Return refine(uint8 image (3, H, W), logits (Q, H, W)) -> refined logits (refine_with_prepared on the image
    prepared as for the windows), or None when params pamr_steps is 0."""
    if not params.get("pamr_steps", 0):
        return None
    mean, std = normalization_tensors(model)

    def refine(image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return refine_with_prepared(prepare_image(image, params["short_side"], mean, std, params["resize"]), logits,
                                    params)

    return refine


def zeroshot_postprocess(query_class: torch.Tensor, num_classes: int, params: dict):
    """Return the function mapping query logits (Q, H, W) to a class map with SCLIP's background rules."""
    def postprocess(logits: torch.Tensor) -> torch.Tensor:
        probs = class_probabilities(logits, query_class, num_classes, params["logit_scale"])
        return predict_classes(probs, params["prob_thd"], params["area_thd"])

    return postprocess


def segment(model, images: Sequence[torch.Tensor], text: torch.Tensor, query_class: torch.Tensor,
            num_classes: int, params: dict) -> list[torch.Tensor]:
    """Return the (H, W) predicted class maps of uint8 images (3, H, W) at their original sizes."""
    window_fn = text_window_fn(model, text, params["variant"], params["amp"])
    postprocess = zeroshot_postprocess(query_class, num_classes, params)
    return [postprocess(logits) for logits in slide_images(model, images, window_fn, params)]


def _as_list(items: list) -> list:
    return items


def image_batches(dataset, batch_size: int, num_workers: int) -> OrderedLoader:
    """Return a loader yielding lists of (image, label, index) of a SegmentationDataset, in order; an unreadable
    image in a worker process is its reader's one-line UserError."""
    return OrderedLoader(dataset, batch_size, num_workers, collate_fn=_as_list)
