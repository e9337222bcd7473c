"""Tables from result records: the long results table and the leaderboard."""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

RESULT_COLUMNS = ["model", "benchmark", "group", "task", "metric", "value", "is_main", "model_sha256",
                  "dataset_fingerprint", "model_family"]
MEAN_COLUMN = "mean"


def results_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Return one row per (model, benchmark, metric), sorted by model, benchmark and metric."""
    rows = []
    for record in records:
        for metric, value in sorted(record["metrics"].items()):
            rows.append({
                "model": record["model"]["name"], "benchmark": record["benchmark"]["name"],
                "group": record["benchmark"]["group"], "task": record["benchmark"]["task"], "metric": metric,
                "value": value, "is_main": metric == record["benchmark"]["main_metric"],
                "model_sha256": record["model"]["sha256"], "dataset_fingerprint": record["dataset"]["fingerprint"],
                "model_family": record["model"].get("family", "open_clip"),
            })
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return table.sort_values(["model", "benchmark", "metric"], kind="stable").reset_index(drop=True)


def leaderboard_table(records: Sequence[dict[str, Any]], model_order: Sequence[str] | None = None,
                      benchmark_order: Sequence[str] | None = None) -> pd.DataFrame:
    """Return rows = models, columns = each benchmark's main metric (in %) plus their mean.

    Rows follow model_order (else name order), columns benchmark_order (else name order);
    the mean is over the benchmarks a model has, and a missing score is NaN.
    """
    scores: dict[str, dict[str, float]] = {}
    for record in records:
        value = record["metrics"].get(record["benchmark"]["main_metric"])
        scores.setdefault(record["model"]["name"], {})[record["benchmark"]["name"]] = (
            math.nan if value is None else 100.0 * value)
    models = list(model_order) if model_order else sorted(scores)
    models += sorted(set(scores) - set(models))
    benchmarks = list(benchmark_order) if benchmark_order else sorted({b for s in scores.values() for b in s})
    benchmarks += sorted({b for s in scores.values() for b in s} - set(benchmarks))
    table = pd.DataFrame([[scores.get(m, {}).get(b, math.nan) for b in benchmarks] for m in models if m in scores],
                         index=pd.Index([m for m in models if m in scores], name="model"), columns=benchmarks)
    table[MEAN_COLUMN] = table[benchmarks].mean(axis=1, skipna=True)
    return table
