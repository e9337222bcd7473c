"""Confidence intervals and paired tests of a results folder, recomputed from its per-sample sidecars.

No model is loaded: each record's sidecar becomes its task's UnitStatistics (through the registry),
and silc_eval/core/resampling.py bootstraps them. Every model of one benchmark is resampled with the
same unit-count matrix, so a difference to a baseline is a paired difference over the same images.
A record that names no sidecar (schema v1, hand-made) gets no interval; a sidecar it names that is
missing or altered is a UserError.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from silc_eval.core import resampling as rs
from silc_eval.core.errors import UserError
from silc_eval.core.records import read_samples, record_path


@dataclass(frozen=True)
class IntervalSettings:
    """How intervals are computed: resamples (0 switches them off), level, seed, and the metric globs wanted
    besides every benchmark's main metric."""

    resamples: int = rs.DEFAULT_RESAMPLES
    level: float = rs.DEFAULT_LEVEL
    seed: int = rs.DEFAULT_SEED
    metrics: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 0:
            raise UserError(f"--resamples {self.resamples}: expected a whole number >= 0 (0: no intervals)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"--bootstrap-seed {self.seed}: expected a whole number >= 0")
        if not 0.0 < float(self.level) < 1.0:
            raise UserError(f"--level {self.level}: expected a confidence level strictly between 0 and 1, e.g. 0.95")

    @property
    def enabled(self) -> bool:
        """Return whether any interval is computed."""
        return self.resamples > 0

    @property
    def alpha(self) -> float:
        """Return the significance level of the paired tests, 1 - level."""
        return 1.0 - float(self.level)

    def wants(self, record: dict[str, Any], metric: str) -> bool:
        """Return whether metric of record gets an interval: the main metric, or one matching a requested glob."""
        return metric == record["benchmark"]["main_metric"] or any(fnmatchcase(metric, p) for p in self.metrics)

    def describe(self) -> str:
        """Return one sentence saying how the intervals were computed."""
        return (f"± is half the width of the {100 * self.level:g}% percentile-bootstrap interval over images "
                f"({self.resamples:,} resamples, seed {self.seed}; seeds of trained heads resampled too).")


def parse_metric_globs(values: Iterable[str]) -> tuple[str, ...]:
    """Return the metric globs of --interval-metrics values (comma-separated, repeatable; 'all' is '*')."""
    globs = [g.strip() for text in values for g in str(text).split(",") if g.strip()]
    return tuple("*" if g == "all" else g for g in globs)


@dataclass(frozen=True)
class Difference:
    """A paired difference of one metric (model minus reference), in fractions, with its test."""

    model: str
    reference: str
    benchmark: str
    metric: str
    delta: float
    low: float
    high: float
    p_value: float
    test: str
    p_holm: float = math.nan
    significant: bool = False


@dataclass
class FolderBootstrap:
    """What the bootstrap of a results folder found."""

    settings: IntervalSettings
    intervals: dict[tuple[str, str, str], rs.Interval] = field(default_factory=dict)  # (model, benchmark, metric)
    differences: dict[tuple[str, str], Difference] = field(default_factory=dict)     # (model, benchmark), main
    without_sidecar: list[str] = field(default_factory=list)                            # "model/benchmark"


def record_statistics(folder: Path, record: dict[str, Any]) -> rs.UnitStatistics | None:
    """Return the UnitStatistics of a record's sidecar (None when the record names none or its task has no
    builder); a named sidecar that is missing or altered is a UserError naming it."""
    from silc_eval.registry import task_contract

    task = task_contract(record["benchmark"]["task"])
    if task is None or task.unit_statistics is None or not isinstance(record.get("samples"), dict):
        return None
    path = record_path(folder, record["model"]["name"], record["benchmark"]["name"])
    return task.unit_statistics(read_samples(path, record), record.get("protocol") or {})


def units_of(record: dict[str, Any], stats: rs.UnitStatistics) -> tuple[str, int]:
    """Return what makes two records' units the same images: the dataset fingerprint and the number of units."""
    return str(record.get("dataset", {}).get("fingerprint", "")), stats.n_units


def check_same_units(a: tuple[dict, rs.UnitStatistics], b: tuple[dict, rs.UnitStatistics], what: str) -> None:
    """Raise a UserError when two records cannot be paired (different dataset fingerprints or unit counts)."""
    (fa, na), (fb, nb) = units_of(*a), units_of(*b)
    if (fa, na) != (fb, nb):
        raise UserError(f"cannot pair {what} on {a[0]['benchmark']['name']}: the evaluation data differ (dataset "
                        f"fingerprint {fa or '?'} with {na} images vs {fb or '?'} with {nb}); a paired comparison "
                        f"needs the same images")


def draw(sides: Sequence[rs.UnitStatistics], wanted: Sequence[Sequence[str]],
         settings: IntervalSettings) -> list[dict[str, np.ndarray]]:
    """Return each side's bootstrap replicates of its wanted metrics; sides with as many units share one W."""
    out: list[dict[str, np.ndarray]] = [{} for _ in sides]
    by_units: dict[int, list[int]] = defaultdict(list)
    for i, stats in enumerate(sides):
        by_units[stats.n_units].append(i)
    for members in by_units.values():
        drawn = rs.replicates([sides[i] for i in members], [list(wanted[i]) for i in members],
                              settings.resamples, settings.seed)
        for i, replicates in zip(members, drawn):
            out[i] = replicates
    return out


def interval_of(value: float, replicates: np.ndarray, settings: IntervalSettings) -> rs.Interval:
    """Return the Interval of a full-sample value and its replicates under settings."""
    low, high = rs.percentile_interval(replicates, settings.level) if not math.isnan(value) else (math.nan,) * 2
    return rs.Interval(value, low, high, settings.level, settings.resamples, settings.seed)


def difference(model: str, reference: str, benchmark: str, metric: str, sides, full, replicates,
               settings: IntervalSettings) -> Difference:
    """Return the Difference of metric between sides[0] (model) and sides[1] (reference), paired."""
    observed = full[0][metric] - full[1][metric]
    test = rs.paired_from_replicates(observed, replicates[0][metric] - replicates[1][metric], settings.level,
                                     sides[0].binary.get(metric), sides[1].binary.get(metric))
    return Difference(model, reference, benchmark, metric, test.delta, test.low, test.high, test.p_value, test.test)


def with_holm(differences: Sequence[Difference], alpha: float) -> list[Difference]:
    """Return the differences with Holm-adjusted p-values over the whole family and the significance flag."""
    adjusted = rs.holm([d.p_value for d in differences])
    return [replace(d, p_holm=p, significant=bool(p < alpha)) for d, p in zip(differences, adjusted)]


def bootstrap_folder(folder: Path, records: Sequence[dict[str, Any]], settings: IntervalSettings,
                     baseline: str | None = None) -> FolderBootstrap:
    """Return the intervals of every wanted metric of the records of folder and, with a baseline, each other
    model's paired difference of every benchmark's main metric (Holm-corrected across each model's
    benchmarks). Records of different images than the baseline's on a benchmark are a UserError."""
    result = FolderBootstrap(settings)
    if not settings.enabled:
        return result
    by_benchmark: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_benchmark[record["benchmark"]["name"]].append(record)
    differences: dict[str, list[Difference]] = defaultdict(list)
    for benchmark, members in by_benchmark.items():
        sides, kept = [], []
        for record in members:
            stats = record_statistics(folder, record)
            if stats is None:
                result.without_sidecar.append(f"{record['model']['name']}/{benchmark}")
            else:
                sides.append(stats)
                kept.append(record)
        if not sides:
            continue
        full = [rs.full_sample(s) for s in sides]
        wanted = [[m for m in f if settings.wants(r, m)] for f, r in zip(full, kept)]
        replicates = draw(sides, wanted, settings)
        for record, f, names, reps in zip(kept, full, wanted, replicates):
            for metric in names:
                result.intervals[(record["model"]["name"], benchmark, metric)] = interval_of(f[metric], reps[metric],
                                                                                            settings)
        names = [r["model"]["name"] for r in kept]
        if baseline is None or baseline not in names:
            continue
        b = names.index(baseline)
        main = kept[b]["benchmark"]["main_metric"]
        for i, record in enumerate(kept):
            if i == b or main not in full[i] or main not in full[b]:
                continue
            check_same_units((record, sides[i]), (kept[b], sides[b]), f"{names[i]} with the baseline {baseline}")
            differences[names[i]].append(difference(names[i], baseline, benchmark, main, (sides[i], sides[b]),
                                                    (full[i], full[b]), (replicates[i], replicates[b]), settings))
    for model, family in differences.items():
        for d in with_holm(family, settings.alpha):
            result.differences[(model, d.benchmark)] = d
    return result
