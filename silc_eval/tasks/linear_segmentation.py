"""Linear-probe semantic segmentation on a frozen backbone (DINOv2-style, benchmarks/PROTOCOLS.md 6).

Last-layer patch tokens (after the final LayerNorm, before the projection) of every
training window are cached once. The probe standardises them (training-token mean and
std, what BatchNorm's running statistics estimate) and maps them with a 1x1 affine layer to
class logits, upsampled bilinearly to the window for a cross-entropy that ignores 255, plus
l2 / 2 times the squared weights. That problem is convex with one minimiser, so the probe is
solved (L-BFGS, convex_probe.py) instead of trained by stochastic steps, and no seed enters it. L-BFGS
starts from the solution of the same probe with nearest- instead of bilinear-upsampled logits (a
problem 64x cheaper per pass on 8x8-pixel patches), which needs 2-3x fewer passes over the pixels.
The solved probe is kept in the feature cache beside the windows' features (machinery/heads.cached_fit), so
a run on the same windows with the same parameters reuses it. Evaluation slides windows over the validation
images exactly as zero-shot segmentation does and reports mmseg's mIoU, mAcc, aAcc and per-class IoU.
Per-sample outcomes: per image and class the intersection, union, predicted and label counts.
Version 3: the probe is solved to its optimum (was: BatchNorm + conv trained by 500 AdamW steps
per seed, which stopped short of it); `l2`, `max_iterations` and `tolerance` replace the
optimiser's parameters and `seeds`. Version 4: `warm_start` (default nearest; was: from zero), the same
problem solved to the same tolerance from a closer start; positions off the training grid interpolated as
zero-shot segmentation (version 2) does.
"""

from __future__ import annotations

import torch

from silc_eval.core.contract import Outcome, Task
from silc_eval.core.errors import UserError
from silc_eval.core.log import warn
from silc_eval.core.params import choice, integer, number
from silc_eval.machinery import heads
from silc_eval.machinery.convex_probe import WARM_STARTS, StandardizedLinear, fit_linear_probe
from silc_eval.machinery.segmentation_metrics import (
    SEGMENTATION_METRICS,
    counts_samples,
    segmentation_score,
    segmentation_unit_statistics,
)

NAME = "linear_segmentation"
VERSION = 4
FEATURE = "patch_tokens"  # what the probe reads, in the feature cache's key
PARAMS = {
    **heads.window_params(),
    "l2": number(1e-4, above=0.0, doc="weight penalty l2/2 ||W||^2 beside the mean pixel cross-entropy"),
    "max_iterations": integer(100, 1, doc="L-BFGS iterations at most"),
    "tolerance": number(5e-4, above=0.0, doc="converged once every gradient entry is below this"),
    "warm_start": choice("nearest", WARM_STARTS, doc="L-BFGS starts from the nearest-upsampling probe, or from zero"),
}


def evaluate(model, data, params: dict, progress: bool = True) -> Outcome:
    """Return the Outcome of the linear probe solved on data['train'] and evaluated on data['eval']."""
    train, dataset = data["train"], data["eval"]
    if train.class_names != dataset.class_names:
        raise UserError(f"{NAME}: the training split's classes differ from the evaluation classes; a linear probe "
                        f"needs the same classes (drop classes/num_classes from the 'train:' block)")
    cache = heads.cache_features(model, train, model.patch_tokens, FEATURE, params, progress)
    dim, classes = cache.features.shape[-1], dataset.num_classes
    probe = StandardizedLinear(torch.zeros(dim), torch.ones(dim), torch.zeros(classes, dim), torch.zeros(classes))
    probe = probe.to(model.device)

    def fit() -> dict[str, float]:
        solved, result = fit_linear_probe(cache.features, cache.labels, classes, params["l2"],
                                          params["max_iterations"], params["tolerance"], model.device, progress,
                                          params["warm_start"])
        probe.load_state_dict(solved.state_dict())
        return {"converged": result.converged, "iterations": result.iterations, "gradient_norm": result.gradient_norm}

    summary = heads.cached_fit(probe, cache, {"task": f"{NAME} v{VERSION}", "params": dict(params)}, fit)
    if not summary["converged"]:
        warn(f"{NAME}: L-BFGS stopped after {summary['iterations']:.0f} iterations with gradient norm "
             f"{summary['gradient_norm']:.2e} (tolerance {params['tolerance']:g} per entry); raise max_iterations to "
             f"solve the probe fully")
    meters = heads.evaluate_heads(model, dataset, model.patch_tokens, FEATURE, [heads.with_float_input(probe)],
                                  params, progress, desc="linear segmentation")
    samples = counts_samples(meters[0], dataset.class_names)
    return Outcome(segmentation_score(samples), samples)


TASK = Task(
    name=NAME, version=VERSION, params=PARAMS, splits=("train", "eval"), formats=("mmseg",),
    data_kind="segmentation", metrics=SEGMENTATION_METRICS, evaluate=evaluate,
    score=segmentation_score,
    unit_statistics=segmentation_unit_statistics,
    description="standardised 1x1 linear probe on frozen patch tokens, solved to its optimum (L-BFGS)")
