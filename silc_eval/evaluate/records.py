"""Result records: one JSON per (model, benchmark) with metrics, their directions, provenance and the
per-sample sidecar they can be recomputed from (core/records.py holds the paths and the sidecar format)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from silc_eval import __version__
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
        "model": {"name": model.name, "sha256": model.sha256, "source": model.source,
                  "architecture": model.architecture},
        "benchmark": {"name": benchmark.name, "task": benchmark.task, "group": benchmark.group,
                      "main_metric": benchmark.main_metric, "task_version": task.version},
        "dataset": {"name": benchmark.dataset["name"], "fingerprint": evaluation.fingerprint,
                    "size": evaluation.sizes["eval"], "splits": evaluation.split_info,
                    "declaration": benchmark.dataset},
        "protocol": evaluation.protocol,
        "metrics": metrics,
        "metric_directions": {name: task.direction(name) or "higher" for name in metrics},
        "samples": None,
        "provenance": {"silc_eval_version": __version__, "git_commit": git_commit(), "packages": package_versions(),
                       "machine": machine_description(device), "wall_time_s": round(evaluation.wall_time_s, 3),
                       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


def write_record(output: Path, record: dict[str, Any], samples) -> Path:
    """Write the sidecar, then the record that names it (each atomically) under output; returns the record's path."""
    path = record_path(output, record["model"]["name"], record["benchmark"]["name"])
    record["samples"] = write_samples(path, samples)
    atomic_write_json(path, record)
    return path
