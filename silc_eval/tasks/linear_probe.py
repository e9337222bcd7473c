"""Linear probes and few-shot classification on frozen image features (benchmarks/PROTOCOLS.md section 3).

protocol `logistic` (CLIP_benchmark): per seed, a validation split is carved from TRAIN
(stratified, `val_proportion`); the weight decay is searched on it (coarse-then-refine);
`full` then retrains on train+val, and each k-shot run trains on k images per class drawn
from the carved train part only (validation images are used to score weight decays, never to
train, exactly as CLIP_benchmark does; `fewshot_weight_decay: <number>` skips the search).
protocol `ridge` (big_vision): per seed, k images per class from the whole TRAIN split and a
closed-form ridge regressor (L2 `l2_reg`). Test = the benchmark's evaluation split.

Metrics: acc1_full_mean/std and acc1_{k}shot_mean/std over seeds (fractions). A shot count
that some class cannot supply is reported as NaN with one line on stderr.
Per-sample outcomes: per shot setting, per seed, per test image the predicted class.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import torch

from silc_eval.core import distributed
from silc_eval.core.contract import Metric, Outcome, Task
from silc_eval.core.errors import UserError
from silc_eval.core.log import note
from silc_eval.core.params import boolean, choice, custom, int_list, integer, number
from silc_eval.core.resampling import UnitStatistics, ratio
from silc_eval.features import cache as feature_cache
from silc_eval.features import encode_images
from silc_eval.machinery import probes as pt

PROTOCOLS = ("logistic", "ridge")
DEFAULT_SHOTS = {"logistic": ["full", 1, 2, 5, 10, 25], "ridge": [1, 5, 10, 25]}
NOT_RUN = -1  # the prediction stored for a shot setting that could not run
# Bumped whenever fitting the probes on the same features and parameters gives other predictions: the predictions
# kept in the feature cache (cached_predictions) carry it in their key, so a change never serves stale ones.
FIT_CODE_VERSION = 1


def _valid_shots(value) -> bool:
    return value is None or (isinstance(value, list) and bool(value) and all(
        s == "full" or (isinstance(s, int) and not isinstance(s, bool) and s >= 1) for s in value))


def _valid_weight_decay(value) -> bool:
    return value == "search" or (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0)


PARAMS = {
    "protocol": choice("logistic", PROTOCOLS, doc="logistic (CLIP_benchmark) or ridge (big_vision few-shot)"),
    "shots": custom(None, _valid_shots, "null or a non-empty list of 'full' and positive integers",
                    doc="null: the protocol's default list"),
    "seeds": int_list([0, 1, 2]),
    "normalize": boolean(True),
    "lr": number(0.1, above=0.0),
    "epochs": integer(10, 1),
    "batch_size": integer(64, 1),
    "val_proportion": number(0.2, above=0.0, maximum=0.99),
    "fewshot_weight_decay": custom("search", _valid_weight_decay, "'search' or a number >= 0"),
    "l2_reg": number(1024.0, minimum=0.0),
    "encode_batch_size": integer(256, 1),
    "num_workers": integer(0, 0),
    "amp": boolean(False),
}


def shot_name(shot) -> str:
    """Return the metric stem of a shot setting: 'full' or '<k>shot'."""
    return "full" if shot == "full" else f"{shot}shot"


def shot_list(params: Mapping) -> list:
    """Return the shot settings of params (the protocol's default list when shots is null), without repeats."""
    shots = params["shots"] if params["shots"] is not None else DEFAULT_SHOTS[params["protocol"]]
    return list(dict.fromkeys(shots))


def _logistic_run(shot, seed: int, x_tr, y_tr, x_te, num_classes: int, params: Mapping) -> torch.Tensor:
    config = pt.LogisticConfig(lr=params["lr"], epochs=params["epochs"], batch_size=params["batch_size"])
    train_idx, val_idx = pt.carve_validation(y_tr.cpu().numpy(), num_classes, params["val_proportion"], seed)
    labels = y_tr.cpu().numpy()
    if shot == "full":
        fit_idx = train_idx
    else:
        fit_idx = pt.sample_kshot(labels, num_classes, shot, seed, pool=train_idx)
    fit_x, fit_y = x_tr[torch.as_tensor(fit_idx)], y_tr[torch.as_tensor(fit_idx)]
    if shot != "full" and params["fewshot_weight_decay"] != "search":
        decay = float(params["fewshot_weight_decay"])
    else:
        val = torch.as_tensor(val_idx)
        decay, _ = pt.search_weight_decay(fit_x, fit_y, x_tr[val], y_tr[val], num_classes, seed, config)
    if shot == "full":  # retrain on train + validation with the chosen weight decay
        all_idx = torch.as_tensor(np.concatenate([train_idx, val_idx]))
        fit_x, fit_y = x_tr[all_idx], y_tr[all_idx]
    w, b = pt.train_logistic(fit_x, fit_y, num_classes, [decay], seed, config)
    return pt.predict(w, b, x_te)[0].argmax(dim=-1)


def _ridge_run(shot, seed: int, x_tr, y_tr, x_te, num_classes: int, params: Mapping) -> torch.Tensor:
    if shot == "full":
        fit_idx = np.arange(len(y_tr))
    else:
        fit_idx = pt.sample_kshot(y_tr.cpu().numpy(), num_classes, shot, seed)
    index = torch.as_tensor(fit_idx)
    fit = pt.ridge_fit(x_tr[index], y_tr[index], num_classes, float(params["l2_reg"]))
    return pt.ridge_predict(fit, x_te).argmax(dim=1)


def probe_outcomes(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, y_te: torch.Tensor,
                   num_classes: int, params: Mapping, report: Callable[[str], None] = note) -> dict[str, np.ndarray]:
    """Return the per-sample outcomes of every shot setting and seed on precomputed features:
    target (N,), predictions (shots, seeds, N) (NOT_RUN where a setting could not run), shots, seeds.

    A shot count some class cannot supply (for any seed) is not run, with one line through report (stderr);
    if no setting can run at all, a UserError.
    """
    shots, seeds = shot_list(params), list(params["seeds"])
    run = _logistic_run if params["protocol"] == "logistic" else _ridge_run
    predictions = np.full((len(shots), len(seeds), len(y_te)), NOT_RUN, dtype=np.int32)
    for i, shot in enumerate(shots):
        try:
            rows = [run(shot, seed, x_tr, y_tr, x_te, num_classes, params).cpu().numpy() for seed in seeds]
        except pt.InsufficientShots as exc:
            report(f"linear_probe {shot_name(shot)} not run: {exc}")
            continue
        predictions[i] = np.stack(rows)
    if (predictions[:, 0, :1] == NOT_RUN).all():
        raise UserError(f"linear_probe could not run any of shots {shots}: the training split has too few images "
                        f"per class; expected at least max(shots) per class (plus the validation carve for logistic)")
    return {"target": y_te.cpu().numpy().astype(np.int32), "predictions": predictions,
            "shots": np.array([str(s) for s in shots]), "seeds": np.array(seeds, dtype=np.int64)}


def cached_outcomes(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, y_te: torch.Tensor,
                    num_classes: int, params: Mapping) -> dict[str, np.ndarray]:
    """Return probe_outcomes, the predictions served from the feature cache when probes were fitted before on
    the same features and labels (by content), number of classes, parameters and FIT_CODE_VERSION; the
    shot settings a class could not supply are noted again on a hit. The cache switched off, or under torchrun
    (as trained segmentation heads): fitted afresh."""
    parts = None if distributed.active() else {  # under torchrun every rank fits the same probes: none writes
        "kind": "probe-predictions", "code": FIT_CODE_VERSION, "classes": num_classes,
        "data": feature_cache.content_sha256(x_tr, y_tr, x_te), "params": dict(params)}

    def compute() -> dict[str, np.ndarray]:
        skipped: list[str] = []
        found = probe_outcomes(x_tr, y_tr, x_te, y_te, num_classes, params, report=skipped.append)
        return {"predictions": found["predictions"], "shots": found["shots"], "seeds": found["seeds"],
                "skipped": np.array(skipped, dtype=str)}

    arrays = feature_cache.cached_arrays(parts, compute)
    for message in arrays["skipped"]:
        note(str(message))
    return {"target": y_te.cpu().numpy().astype(np.int32), "predictions": arrays["predictions"],
            "shots": arrays["shots"], "seeds": arrays["seeds"]}


def score(samples: Mapping[str, np.ndarray], params: Mapping) -> dict[str, float]:
    """Return acc1_<shot>_mean / _std over seeds for every shot setting (NaN for a setting not run)."""
    target, predictions = np.asarray(samples["target"]), np.asarray(samples["predictions"])
    metrics = {}
    for shot, per_seed in zip(samples["shots"], predictions):
        name = shot_name(shot if shot == "full" else int(shot))
        if (per_seed == NOT_RUN).all():
            mean = std = math.nan
        else:
            accuracies = (per_seed == target[None]).mean(axis=1)
            mean, std = float(np.mean(accuracies)), float(np.std(accuracies))
        metrics[f"acc1_{name}_mean"], metrics[f"acc1_{name}_std"] = mean, std
    return metrics


def unit_statistics(samples: Mapping[str, np.ndarray], params: Mapping | None = None) -> UnitStatistics:
    """Return the per-image, per-seed UnitStatistics of the outcomes: 1 and, per shot setting, whether the
    seed's probe got the image right; a resample's acc1_<shot>_mean is the mean over (drawn) seeds of the
    accuracies, as score computes it. The _std spreads get no interval."""
    target, predictions = np.asarray(samples["target"]), np.asarray(samples["predictions"])
    names = [f"acc1_{shot_name(shot if shot == 'full' else int(shot))}_mean" for shot in samples["shots"]]
    not_run = [(per_seed == NOT_RUN).all() for per_seed in predictions]
    correct = (predictions == target[None, None]).astype(np.float64)  # (shots, seeds, N)
    values = np.concatenate([np.ones((1,) + correct.shape[1:]), correct]).transpose(2, 1, 0)  # (N, S, 1 + shots)

    def reduce(sums: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.full(sums.shape[:2], math.nan) if skipped else ratio(sums[..., 1 + i], sums[..., 0])
                for i, (name, skipped) in enumerate(zip(names, not_run))}

    binary = ({name: correct[i, 0] > 0 for i, (name, skipped) in enumerate(zip(names, not_run)) if not skipped}
              if correct.shape[1] == 1 else {})
    return UnitStatistics(values, reduce, binary)


def probe_metrics(x_tr, y_tr, x_te, y_te, num_classes: int, params: Mapping) -> dict[str, float]:
    """Return acc1_<shot>_mean / _std of every shot setting on precomputed features (score of their outcomes)."""
    return score(probe_outcomes(x_tr, y_tr, x_te, y_te, num_classes, params), params)


def evaluate(model, data, params: dict, progress: bool = True) -> Outcome:
    """Return the probe Outcome of model: features of data['train'] and data['eval'] (via the feature cache)."""
    train, test = data["train"], data["eval"]
    if train.classes != test.classes or getattr(train, "folders", None) != getattr(test, "folders", None):
        raise UserError("linear_probe: the train and evaluation splits have different classes; expected the same "
                        "class folders in both")
    encode = dict(batch_size=params["encode_batch_size"], num_workers=params["num_workers"], amp=params["amp"],
                  progress=progress, normalize=params["normalize"])
    x_tr = encode_images(model, train, desc="probe train images", split="train", **encode)
    x_te = encode_images(model, test, desc="probe test images", split="eval", **encode)
    device = model.device
    y_tr = torch.as_tensor(train.targets, device=device)
    y_te = torch.as_tensor(test.targets, device=device)
    samples = cached_outcomes(x_tr.to(device), y_tr, x_te.to(device), y_te, len(test.classes), params)
    return Outcome(score(samples, params), samples)


TASK = Task(
    name="linear_probe", version=1, params=PARAMS, splits=("train", "eval"),
    formats=("imagefolder",), data_kind="classification",
    metrics=(Metric("acc1_{shot}_mean"), Metric("acc1_{shot}_std", "none")),
    evaluate=evaluate, score=score, unit_statistics=unit_statistics,
    description="logistic-regression probe (CLIP_benchmark) or ridge few-shot (big_vision) on frozen features")
