"""Result records: one JSON per (model, benchmark), holding metrics and provenance."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from silc_eval import __version__
from silc_eval.core.io import atomic_write_json
from silc_eval.core.provenance import git_commit, machine_description, package_versions

RECORD_SCHEMA = "silc-eval/result/v1"
RECORDS_DIR = "records"


def safe_name(name: str) -> str:
    """Return name with every character outside [A-Za-z0-9._-] replaced by '_' (for file names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "unnamed"


def record_path(output: Path, model_name: str, benchmark_name: str) -> Path:
    """Return where the record of (model, benchmark) lives under an output folder."""
    return Path(output) / RECORDS_DIR / safe_name(model_name) / f"{safe_name(benchmark_name)}.json"


def make_record(model, benchmark, dataset, protocol: dict, metrics: dict[str, float], wall_time_s: float,
                device: str) -> dict[str, Any]:
    """Return the JSON-ready record of one evaluation, with full provenance."""
    return {
        "schema": RECORD_SCHEMA,
        "model": {"name": model.name, "sha256": model.sha256, "source": model.source,
                  "architecture": model.architecture},
        "benchmark": {"name": benchmark.name, "task": benchmark.task, "group": benchmark.group,
                      "main_metric": benchmark.main_metric},
        "dataset": {"name": benchmark.dataset["name"], "fingerprint": dataset.fingerprint, "size": len(dataset),
                    "declaration": benchmark.dataset},
        "protocol": protocol,
        "metrics": metrics,
        "provenance": {"silc_eval_version": __version__, "git_commit": git_commit(), "packages": package_versions(),
                       "machine": machine_description(device), "wall_time_s": round(wall_time_s, 3),
                       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


def write_record(output: Path, record: dict[str, Any]) -> Path:
    """Write a record atomically under output; returns its path."""
    path = record_path(output, record["model"]["name"], record["benchmark"]["name"])
    atomic_write_json(path, record)
    return path


def read_records(output: Path) -> list[dict[str, Any]]:
    """Return every record under output/records, in path order (malformed files are skipped)."""
    records = []
    for path in sorted((Path(output) / RECORDS_DIR).glob("*/*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("schema") == RECORD_SCHEMA:
            records.append(record)
    return records
