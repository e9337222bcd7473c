"""The noise-aware parts of `silc-eval check`: a reference run's records as references, regressions judged
by paired intervals, and each listed score's own interval against plain reference scores.

Rows are report/check.py's Row; they are only copied here with dataclasses.replace.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from silc_eval.core.resampling import full_sample
from silc_eval.report.intervals import (
    Difference,
    IntervalSettings,
    draw,
    interval_of,
    record_statistics,
)
from silc_eval.report.references import Reference

COMPARED = ("ok", "regression", "improvement", "changed")


def run_references(records: Sequence[dict], source: str) -> list[Reference]:
    """Return every metric of a reference run's records as a Reference (matched by model name, not weights)."""
    return [Reference(r["model"]["name"], r["benchmark"]["name"], metric,
                      math.nan if value is None else float(value), source=source)
            for r in records for metric, value in sorted(r["metrics"].items())]


def interval_status(direction: str, low: float, high: float, tolerance: float) -> str | None:
    """Return the status a paired delta interval gives (regression only when all of it lies below -tolerance,
    improvement when all of it lies above +tolerance, else ok), or None to keep the plain comparison (a
    metric without a better direction, an undefined interval)."""
    if direction == "none" or math.isnan(low) or math.isnan(high):
        return None
    below, above = high < -tolerance, low > tolerance
    if direction == "lower":
        below, above = above, below
    return "regression" if below else "improvement" if above else "ok"


def noise_aware(rows: Sequence, differences: Sequence[Difference]) -> list:
    """Return rows with the compared scores that have a paired Difference re-judged by its interval."""
    by_key = {(d.reference, d.benchmark, d.metric): d for d in differences}
    judged = []
    for row in rows:
        d = by_key.get((row.record_model, row.benchmark, row.metric))
        if d is None or row.status not in COMPARED:
            judged.append(row)
            continue
        status = interval_status(row.direction, d.low, d.high, row.tolerance or 0.0)
        judged.append(replace(row, status=status or row.status, interval=(d.low, d.high), paired=True))
    return judged


def with_result_intervals(rows: Sequence, folder: Path, records: Sequence[dict], settings: IntervalSettings,
                          aliases: Mapping[str, str]) -> list:
    """Return rows with the bootstrap interval of each listed (not ok) score that has a sidecar."""
    if not settings.enabled:
        return list(rows)
    by_record = {(aliases.get(r["model"]["name"], r["model"]["name"]), r["benchmark"]["name"]): r for r in records}
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        if row.status in COMPARED and row.status != "ok" and (row.record_model, row.benchmark) in by_record:
            wanted[(row.record_model, row.benchmark)].add(row.metric)
    found = {}
    for key, metrics in wanted.items():
        stats = record_statistics(folder, by_record[key])
        if stats is None:
            continue
        full = full_sample(stats)
        names = [m for m in sorted(metrics) if m in full]
        replicates = draw([stats], [names], settings)[0]
        found.update({(*key, m): interval_of(full[m], replicates[m], settings) for m in names})
    return [replace(row, interval=(found[k].low, found[k].high)) if (k := (row.record_model, row.benchmark,
                                                                           row.metric)) in found else row
            for row in rows]
