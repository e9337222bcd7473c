"""Paired differences between two results folders (`silc-eval compare`, `check --reference-run`).

Records are paired by (model, benchmark); both must name their per-sample sidecars and hold the same
images (dataset fingerprint and unit count). Each pair is resampled with one unit-count matrix, so a
difference's interval and p-value count only what changed between the runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from silc_eval.core.errors import UserError
from silc_eval.core.log import warn as warn_stderr
from silc_eval.core.records import record_path
from silc_eval.core.resampling import full_sample
from silc_eval.report.intervals import (
    Difference,
    IntervalSettings,
    check_same_units,
    difference,
    draw,
    record_statistics,
    with_holm,
)
from silc_eval.report.records import load_result_records

DIFFERENCE_COLUMNS = ["model", "reference", "benchmark", "metric", "delta_pp", "ci_low_pp", "ci_high_pp", "p_value",
                      "test", "p_holm", "significant"]


def _statistics(folder: Path, record: dict[str, Any]):
    stats = record_statistics(folder, record)
    if stats is None:
        path = record_path(folder, record["model"]["name"], record["benchmark"]["name"])
        raise UserError(f"{path} names no per-sample sidecar (or its task has none); a paired comparison needs "
                        f"them: rerun 'silc-eval run' into {folder}")
    return stats


def pair_runs(folder: Path, records: Sequence[dict], reference_folder: Path, reference_records: Sequence[dict],
              settings: IntervalSettings, every_metric: bool = False,
              aliases: Mapping[str, str] | None = None) -> list[Difference]:
    """Return the paired Difference (folder minus reference folder) of every (model, benchmark) in both.

    Metrics: each benchmark's main metric and the requested globs, or with every_metric all that the
    task's unit statistics give. aliases maps a model name of folder to its name in the reference.
    P-values are not yet Holm-corrected (see with_holm).
    """
    aliases = dict(aliases or {})
    reference = {(r["model"]["name"], r["benchmark"]["name"]): r for r in reference_records}
    found = []
    for record in records:
        model, benchmark = record["model"]["name"], record["benchmark"]["name"]
        other = reference.get((aliases.get(model, model), benchmark))
        if other is None:
            continue
        sides = (_statistics(folder, record), _statistics(reference_folder, other))
        check_same_units((record, sides[0]), (other, sides[1]), f"{model} in {folder} with {reference_folder}")
        full = [full_sample(s) for s in sides]
        names = [m for m in full[0] if m in full[1] and (every_metric or settings.wants(record, m))]
        replicates = draw(sides, [names, names], settings)
        found += [difference(model, aliases.get(model, model), benchmark, m, sides, full, replicates, settings)
                  for m in names]
    return found


def differences_table(differences: Sequence[Difference]) -> pd.DataFrame:
    """Return one row per Difference, in percentage points (DIFFERENCE_COLUMNS)."""
    rows = [{"model": d.model, "reference": d.reference, "benchmark": d.benchmark, "metric": d.metric,
             "delta_pp": 100 * d.delta, "ci_low_pp": 100 * d.low, "ci_high_pp": 100 * d.high, "p_value": d.p_value,
             "test": d.test, "p_holm": d.p_holm, "significant": d.significant} for d in differences]
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


def _pp(value: float, signed: bool = True) -> str:
    return "nan" if math.isnan(value) else f"{value:{'+' if signed else ''}.2f}"


def format_differences(differences: Sequence[Difference], level: float) -> str:
    """Return an aligned text table of paired differences (pp), significant ones marked '*'."""
    header = ("benchmark", "model", "metric", "delta pp", f"{100 * level:g}% interval pp", "p", "Holm p", "test", "")
    lines = [header]
    for d in differences:
        lines.append((d.benchmark, d.model if d.model == d.reference else f"{d.model} (vs {d.reference})", d.metric,
                      _pp(100 * d.delta), f"[{_pp(100 * d.low)}, {_pp(100 * d.high)}]",
                      "nan" if math.isnan(d.p_value) else f"{d.p_value:.3g}",
                      "nan" if math.isnan(d.p_holm) else f"{d.p_holm:.3g}", d.test, "*" if d.significant else ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


@dataclass
class Comparison:
    """What `silc-eval compare` found: the differences (Holm-corrected across the table) and its text."""

    differences: list[Difference]
    text: str


def compare_runs(run_a: Path, run_b: Path, settings: IntervalSettings, csv: Path | None = None,
                 strict: bool = False, warn: Callable[[str], None] = warn_stderr) -> Comparison:
    """Return the Comparison of RUN_B minus RUN_A for every (model, benchmark) both hold; with csv, also
    write the table there. Nothing in common, or no interval to compute, is a UserError."""
    from silc_eval.core.io import atomic_write_text

    if not settings.enabled:
        raise UserError("--resamples 0: a comparison needs resamples; expected a positive number such as 1000")
    records_a = load_result_records(run_a, strict=strict, warn=warn)
    records_b = load_result_records(run_b, strict=strict, warn=warn)
    found = with_holm(pair_runs(run_b, records_b, run_a, records_a, settings), settings.alpha)
    if not found:
        raise UserError(f"{run_a} and {run_b} share no (model, benchmark) record; expected two runs of the same "
                        f"models on the same benchmarks")
    keys_a = {(r["model"]["name"], r["benchmark"]["name"]) for r in records_a}
    keys_b = {(r["model"]["name"], r["benchmark"]["name"]) for r in records_b}
    alone = [f"only in {run}: {len(keys)} records" for run, keys in ((run_a, keys_a - keys_b), (run_b, keys_b - keys_a))
             if keys]
    notes = [f"{run_b} minus {run_a}, paired over the same images; p: McNemar's exact test for per-image "
             f"correctness, a paired bootstrap otherwise; Holm-corrected across the {len(found)} rows; "
             f"* significant at {settings.alpha:g}.", *alone]
    if csv is not None:
        atomic_write_text(Path(csv), differences_table(found).to_csv(index=False, float_format="%.6g"))
    return Comparison(found, format_differences(found, settings.level) + "\n" + "\n".join(notes))
