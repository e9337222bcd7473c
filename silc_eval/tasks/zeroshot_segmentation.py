"""Training-free zero-shot semantic segmentation (SCLIP / ClearCLIP / NACLIP, benchmarks/PROTOCOLS.md 4, 10).

Dense patch features of a chosen last-block variant are compared with template-ensembled
text embeddings of every class name (synonyms and background words are extra queries);
window logits are slid, averaged and upsampled to the original image; the logit scale and
a softmax over all queries give probabilities, each class keeps the max over its names,
classes covering less than area_thd of the foreground are zeroed, and pixels whose best
probability is below prob_thd become class 0. The metric is mmseg's IoUMetric.
Per-sample outcomes: per image and class the intersection, union, predicted and label counts.
Version 2: off the model's training grid, positional embeddings are interpolated with the reference
code's scale factor (g + 0.1) / old instead of by size (models/vit.py); on it, nothing changes. `resize`
(default torch, as before) can resize the uint8 image by OpenCV as the reference pipelines do (mmcv);
`pamr_steps` (default 0, off) refines the logits with PAMR as NACLIP's headline numbers do. `window: 0`
encodes the whole resized image in one forward (NACLIP's slide_crop 0 on VOC); windows of 1 and more give the
numbers they gave, so the version stays 2.
"""

from __future__ import annotations

from silc_eval.core.contract import Outcome, Task
from silc_eval.core.params import boolean, choice, int_list, integer, number
from silc_eval.machinery.dense_segmentation import cosine_logits, pamr_refiner, zeroshot_postprocess
from silc_eval.machinery.prompts import query_embeddings
from silc_eval.machinery.segmentation_metrics import (
    SEGMENTATION_METRICS,
    counts_samples,
    segmentation_score,
    segmentation_unit_statistics,
)
from silc_eval.machinery.shared_trunk import dense_variant
from silc_eval.machinery.window_features import slid_meters, window_features
from silc_eval.machinery.windows import RESIZES
from silc_eval.models.dense import VARIANTS


def evaluate(model, data, params: dict, progress: bool = True) -> Outcome:
    """Return the zero-shot segmentation Outcome of model on data['eval'] (a SegmentationDataset)."""
    dataset = data["eval"]
    text, query_class = query_embeddings(model, dataset.classes, dataset.templates, amp=params["amp"])
    text = text.to(model.device)
    variant = params["variant"]
    features = window_features(model, dataset, lambda windows: model.dense_features(windows, variant),
                               f"dense:{variant}", params, "eval", progress, desc="zero-shot segmentation",
                               shared=dense_variant(model, variant))
    postprocess = zeroshot_postprocess(query_class, dataset.num_classes, params)
    (meter,) = slid_meters(features, dataset, [lambda feats: cosine_logits(feats, text)], postprocess, params,
                           model.device, progress, desc="zero-shot segmentation", refine=pamr_refiner(model, params))
    samples = counts_samples(meter, dataset.class_names)
    return Outcome(segmentation_score(samples), samples)


TASK = Task(
    name="zeroshot_segmentation", version=2,
    params={"variant": choice("sclip", VARIANTS, doc="last-block variant (models/dense.py)"),
            "short_side": integer(336, 1),
            "window": integer(224, 0, doc="sliding-window side in pixels; 0: the whole resized image in one forward "
                                          "(the reference code's slide_crop 0; stride is then unused)"),
            "stride": integer(112, 1),
            "resize": choice("torch", RESIZES, doc="bilinear resize of the float image (torch) or of the uint8 "
                                                   "image by OpenCV, as mmcv's Resize in the reference code (mmcv)"),
            "pamr_steps": integer(0, 0, doc="rounds of PAMR refinement of the logits (0: none; NACLIP: 10)"),
            "pamr_dilations": int_list([8, 16], 1, doc="PAMR's neighbourhood dilations (NACLIP's)"),
            "logit_scale": number(40.0, above=0.0), "prob_thd": number(0.0, minimum=0.0, maximum=1.0),
            "area_thd": number(None, minimum=0.0, maximum=1.0, nullable=True),
            "batch_size": integer(32, 1), "num_workers": integer(0, 0), "amp": boolean(False)},
    splits=("eval",), formats=("mmseg",), data_kind="segmentation", metrics=SEGMENTATION_METRICS,
    evaluate=evaluate, score=segmentation_score, unit_statistics=segmentation_unit_statistics,
    description="training-free dense CLIP segmentation (vanilla, MaskCLIP, SCLIP, ClearCLIP, NACLIP)")
