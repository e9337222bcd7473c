"""Result records: one JSON per (model, benchmark) with metrics, their directions, provenance and the
per-sample sidecar they can be recomputed from (core/records.py holds the paths and the sidecar format)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from silc_eval import __version__
from silc_eval.core import resampling
from silc_eval.core.io import atomic_write_json
from silc_eval.core.provenance import git_commit, machine_description, package_versions
from silc_eval.core.records import RECORD_SCHEMA, record_path, write_samples


def make_record(model, benchmark, evaluation, device: str) -> dict[str, Any]:
    """Return the JSON-ready record of one Evaluation (evaluate/api.py), with full provenance; the samples
    entry is filled in by write_record."""
    task = benchmark.task_spec
    metrics = evaluation.outcome.metrics
    return {
        "schema": RECORD_SCHEMA,
        "model": model_entry(model),
        "benchmark": {"name": benchmark.name, "task": benchmark.task, "group": benchmark.group,
                      "main_metric": benchmark.main_metric, "task_version": task.version},
        "dataset": {"name": benchmark.dataset["name"], "fingerprint": evaluation.fingerprint,
                    "size": evaluation.sizes["eval"], "splits": evaluation.split_info,
                    "declaration": benchmark.dataset},
        "protocol": evaluation.protocol,
        "metrics": metrics,
        "metric_directions": {name: task.direction(name) or "higher" for name in metrics},
        "intervals": main_metric_interval(task, benchmark.main_metric, evaluation),
        "samples": None,
        "provenance": {"silc_eval_version": __version__, "git_commit": git_commit(), "packages": package_versions(),
                       "machine": machine_description(device), "wall_time_s": round(evaluation.wall_time_s, 3),
                       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


def model_entry(model) -> dict[str, Any]:
    """Return the record's model section: identity, family, precision (models/loading.py PRECISIONS), and (where
    the model states them) its preprocessing and logit scale (Hugging Face models: read from the folder's processor
    and weights)."""
    entry = {"name": model.name, "sha256": model.sha256, "source": model.source, "architecture": model.architecture,
             "family": getattr(model, "family", "open_clip"), "precision": getattr(model, "precision", "fp32")}
    preprocessing = getattr(model, "preprocessing", None)
    if preprocessing is not None:
        entry["preprocessing"] = json.loads(json.dumps(preprocessing, sort_keys=True))
        entry["logit_scale"] = model.logit_scale
    return entry


def main_metric_interval(task, metric: str, evaluation) -> dict[str, dict[str, Any]]:
    """Return {metric: its percentile-bootstrap interval over images (core/resampling.py defaults) with the
    method, level, resamples and seed}, or {} when the task gives no unit statistics or the metric is
    undefined. `silc-eval report` recomputes intervals from the sidecar with any settings."""
    if task.unit_statistics is None or evaluation.outcome.metrics.get(metric) is None:
        return {}
    stats = task.unit_statistics(evaluation.outcome.samples, evaluation.protocol)
    interval = resampling.bootstrap_interval(stats, metric)
    if math.isnan(interval.low):
        return {}
    return {metric: {"low": interval.low, "high": interval.high, "method": interval.method,
                     "level": interval.level, "resamples": interval.resamples, "seed": interval.seed,
                     "unit": "image"}}


def write_record(output: Path, record: dict[str, Any], samples) -> Path:
    """Write the sidecar, then the record that names it (each atomically) under output; returns the record's path."""
    path = record_path(output, record["model"]["name"], record["benchmark"]["name"])
    record["samples"] = write_samples(path, samples)
    atomic_write_json(path, record)
    return path
