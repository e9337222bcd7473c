"""Linear probes and few-shot classification on frozen image features (PROTOCOLS.md section 3).

protocol `logistic` (CLIP_benchmark): per seed, a validation split is carved from TRAIN
(stratified, `val_proportion`); the weight decay is searched on it (coarse-then-refine);
`full` then retrains on train+val, and each k-shot run trains on k images per class drawn
from the carved train part only (validation images are used to score weight decays, never to
train, exactly as CLIP_benchmark does; `fewshot_weight_decay: <number>` skips the search).
protocol `ridge` (big_vision): per seed, k images per class from the whole TRAIN split and a
closed-form ridge regressor (L2 `l2_reg`). Test = the benchmark's evaluation split.

Metrics: acc1_full_mean/std and acc1_{k}shot_mean/std over seeds (fractions). A shot count
that some class cannot supply is reported as NaN with one line on stderr.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

from silc_eval.core.errors import UserError
from silc_eval.features import encode_images
from silc_eval.machinery import probes as pt

PROTOCOLS = ("logistic", "ridge")
DEFAULT_SHOTS = {"logistic": ["full", 1, 2, 5, 10, 25], "ridge": [1, 5, 10, 25]}
DEFAULT_PARAMS = {
    "protocol": "logistic",
    "shots": None,  # None: the protocol's default list above
    "seeds": [0, 1, 2],
    "normalize": True,
    "lr": 0.1,
    "epochs": 10,
    "batch_size": 64,
    "val_proportion": 0.2,
    "fewshot_weight_decay": "search",
    "l2_reg": 1024.0,
    "encode_batch_size": 256,
    "num_workers": 0,
    "amp": False,
}
METRICS = ("acc1_full_mean", "acc1_full_std", "acc1_{k}shot_mean", "acc1_{k}shot_std")
DATASET_FORMATS = ("imagefolder",)


def shot_name(shot) -> str:
    """Return the metric stem of a shot setting: 'full' or '<k>shot'."""
    return "full" if shot == "full" else f"{shot}shot"


def check_params(params: dict) -> tuple[str, list, list[int]]:
    """Return (protocol, shots, seeds) after validating params; mistakes are UserErrors."""
    protocol = params["protocol"]
    if protocol not in PROTOCOLS:
        raise UserError(f"linear_probe protocol '{protocol}' is unknown; expected one of {', '.join(PROTOCOLS)}")
    shots = params["shots"] if params["shots"] is not None else DEFAULT_SHOTS[protocol]
    if not isinstance(shots, list) or not shots or any(
            s != "full" and (isinstance(s, bool) or not isinstance(s, int) or s < 1) for s in shots):
        raise UserError(f"linear_probe shots {shots!r} is invalid; expected a list of 'full' and positive integers")
    seeds = params["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise UserError(f"linear_probe seeds {seeds!r} is invalid; expected a non-empty list of integers")
    wd = params["fewshot_weight_decay"]
    if wd != "search" and (isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0):
        raise UserError(f"linear_probe fewshot_weight_decay {wd!r} is invalid; expected 'search' or a number >= 0")
    if not 0 < params["val_proportion"] < 1:
        raise UserError(f"linear_probe val_proportion {params['val_proportion']} is invalid; expected 0 < p < 1")
    return protocol, list(dict.fromkeys(shots)), seeds


def train_split_of(dataset, transform):
    """Return the training split of an imagefolder dataset built by silc_eval.data.build (needs train_root)."""
    from silc_eval.data.build import build_dataset

    if getattr(dataset, "declaration", None) is None:
        raise UserError("linear_probe needs a dataset built from a benchmark declaration with train_root; "
                        "got a dataset without one")
    return build_dataset(dataset.declaration, dataset.root, transform, split="train")


def _logistic_run(shot, seed: int, x_tr, y_tr, x_te, y_te, num_classes: int, params: dict) -> float:
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
    return pt.top1(pt.predict(w, b, x_te), y_te).item()


def _ridge_run(shot, seed: int, x_tr, y_tr, x_te, y_te, num_classes: int, params: dict) -> float:
    if shot == "full":
        fit_idx = np.arange(len(y_tr))
    else:
        fit_idx = pt.sample_kshot(y_tr.cpu().numpy(), num_classes, shot, seed)
    index = torch.as_tensor(fit_idx)
    fit = pt.ridge_fit(x_tr[index], y_tr[index], num_classes, float(params["l2_reg"]))
    return (pt.ridge_predict(fit, x_te).argmax(dim=1) == y_te).double().mean().item()


def probe_metrics(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, y_te: torch.Tensor,
                  num_classes: int, params: dict) -> dict[str, float]:
    """Return acc1_<shot>_mean / _std for every shot setting on precomputed features.

    A shot count some class cannot supply (for any seed) gives NaN and one stderr line; if no
    setting can run at all, a UserError.
    """
    protocol, shots, seeds = check_params(params)
    run = _logistic_run if protocol == "logistic" else _ridge_run
    metrics, ran = {}, 0
    for shot in shots:
        try:
            accuracies = [run(shot, seed, x_tr, y_tr, x_te, y_te, num_classes, params) for seed in seeds]
        except pt.InsufficientShots as exc:
            print(f"silc-eval: linear_probe {shot_name(shot)} not run: {exc}", file=sys.stderr, flush=True)
            accuracies = [math.nan]
        else:
            ran += 1
        name = shot_name(shot)
        metrics[f"acc1_{name}_mean"] = float(np.mean(accuracies))
        metrics[f"acc1_{name}_std"] = float(np.std(accuracies)) if not math.isnan(accuracies[0]) else math.nan
    if not ran:
        raise UserError(f"linear_probe could not run any of shots {shots}: the training split has too few images "
                        f"per class; expected at least max(shots) per class (plus the validation carve for logistic)")
    return metrics


def evaluate(model, dataset, params: dict, progress: bool = True) -> dict[str, float]:
    """Return the probe metrics of model: features of the TRAIN split and of dataset (the test split), via the cache."""
    check_params(params)
    train = train_split_of(dataset, dataset.transform)
    if train.classes != dataset.classes or train.folders != dataset.folders:
        raise UserError(f"train split {train.root} and evaluation split {dataset.root} have different classes; "
                        f"expected the same class folders in both")
    encode = dict(batch_size=params["encode_batch_size"], num_workers=params["num_workers"], amp=params["amp"],
                  progress=progress, normalize=params["normalize"])
    x_tr = encode_images(model, train, desc="probe train images", split="train", **encode)
    x_te = encode_images(model, dataset, desc="probe test images", split=getattr(dataset, "split", "val"), **encode)
    device = model.device
    y_tr = torch.as_tensor(train.targets, device=device)
    y_te = torch.as_tensor(dataset.targets, device=device)
    return probe_metrics(x_tr.to(device), y_tr, x_te.to(device), y_te, len(dataset.classes), params)
