"""Seeded bootstrap intervals and paired significance tests over evaluation units (images), in numpy.

A task turns its per-sample outcomes into UnitStatistics: per unit (image) and per training seed
(S = 1 for a task that trains nothing) K additive statistics, and a `reduce` that maps summed
statistics (B, S, K) to {metric: (B, S)}, NaN where the metric is undefined. The metric of a
resample is, per seed, reduce(the sum over units weighted by how often each unit was drawn),
then the mean over seeds (leaving out seeds where it is undefined, as the tasks do); with every unit
and seed taken once that is exactly the task's score.

Bootstrap: a multinomial unit-count matrix W (B, N) drawn with default_rng(seed), sums W @ values.
When S > 1 every replicate also draws the S seeds with replacement (a hierarchical bootstrap of
images and seeds), so the interval covers seed and sample variance. Intervals are percentile
intervals. A paired comparison uses the same W for both sides (and the same seed draws when both
have as many seeds); its p-value is the share of centred bootstrap deltas at least as extreme as
the observed one, (1 + count) / (1 + B). McNemar's exact test serves metrics that are the mean of
a per-unit correctness; Holm's step-down method corrects a family of p-values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0
CHUNK_ELEMENTS = 1 << 22  # W chunk rows x max(units, statistics) stays near 32 MB of float64
PERCENTILE_METHOD = "percentile bootstrap"
PAIRED_BOOTSTRAP = "paired bootstrap"
MCNEMAR = "McNemar exact"

Reduce = Callable[[np.ndarray], dict[str, np.ndarray]]


def is_sparse(values: object) -> bool:
    """Return whether values is a scipy sparse matrix or array (scipy is not imported to find out)."""
    return type(values).__module__.startswith("scipy.sparse")


@dataclass(frozen=True)
class UnitStatistics:
    """Per unit and seed additive statistics and how their sums become metrics.

    values: float64 (N units, S seeds, K statistics), or a scipy sparse matrix (N, S * K) with
    `seeds` = S (for one-hot statistics over many classes). reduce: summed statistics (B, S, K)
    -> {metric: (B, S)}. binary: {metric: (N,) bool} for metrics that are the plain mean of a
    per-unit correctness (S = 1), so McNemar's exact test applies to them.
    """

    values: object
    reduce: Reduce
    binary: Mapping[str, np.ndarray] = field(default_factory=dict)
    seeds: int | None = None

    def __post_init__(self):
        if is_sparse(self.values):
            if self.seeds is None or self.values.shape[1] % self.seeds:
                raise ValueError("sparse unit statistics need seeds dividing their number of columns")
        else:
            values = np.asarray(self.values, dtype=np.float64)
            if values.ndim != 3:
                raise ValueError(f"unit statistics must be (units, seeds, statistics), got shape {values.shape}")
            object.__setattr__(self, "values", values)
            object.__setattr__(self, "seeds", values.shape[1])

    @property
    def n_units(self) -> int:
        """Return N, the number of resampled units."""
        return int(self.values.shape[0])

    @property
    def n_stats(self) -> int:
        """Return K, the number of additive statistics per unit and seed."""
        return int(self.values.shape[-1] if self.values.ndim == 3 else self.values.shape[1] // self.seeds)

    def sums(self, weights: np.ndarray) -> np.ndarray:
        """Return the weighted sums (B, S, K) of the statistics under unit weights (B, N)."""
        weights = np.asarray(weights, dtype=np.float64)
        if is_sparse(self.values):
            flat = np.asarray((self.values.T @ weights.T).T)
        else:
            flat = weights @ self.values.reshape(self.n_units, -1)
        return flat.reshape(len(weights), self.seeds, self.n_stats)


@dataclass(frozen=True)
class Interval:
    """A metric's full-sample value and its percentile-bootstrap interval (NaN where undefined)."""

    value: float
    low: float
    high: float
    level: float = DEFAULT_LEVEL
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    method: str = PERCENTILE_METHOD


@dataclass(frozen=True)
class PairedTest:
    """A paired difference (a minus b), its bootstrap interval and the p-value of the named test."""

    delta: float
    low: float
    high: float
    p_value: float
    test: str


def seed_mean(per_seed: np.ndarray, seed_counts: np.ndarray) -> np.ndarray:
    """Return the mean over drawn seeds (B,) of per-seed metrics (B, S), each seed weighted by its draw count.

    As the tasks average seeds, a seed where the metric is undefined (NaN) is left out of the mean; the
    result is NaN only where no drawn seed defines it. Undrawn seeds are ignored.
    """
    counts = np.where(np.isnan(per_seed), 0.0, np.asarray(seed_counts, dtype=np.float64))
    total = np.where(counts > 0, per_seed, 0.0)
    weight = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weight > 0, (total * counts).sum(axis=1) / np.maximum(weight, 1), np.nan)


def full_sample(stats: UnitStatistics, metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Return {metric: value} with every unit and every seed taken once (the task's own score)."""
    reduced = stats.reduce(stats.sums(np.ones((1, stats.n_units))))
    names = list(reduced) if metrics is None else list(metrics)
    ones = np.ones((1, stats.seeds))
    return {name: float(seed_mean(reduced[name], ones)[0]) for name in names}


def unit_count_chunks(n_units: int, resamples: int, seed: int, width: int = 1):
    """Yield multinomial unit-count matrices (b, N), b rows at a time, B rows in all, from default_rng(seed).

    Rows come from one generator in order, so the draws do not depend on the chunk size; width (the
    number of statistics per unit) only sizes the chunks.
    """
    rng = np.random.default_rng(seed)
    probabilities = np.full(n_units, 1.0 / n_units)
    step = max(1, min(resamples, CHUNK_ELEMENTS // max(n_units, width, 1)))
    for start in range(0, resamples, step):
        yield rng.multinomial(n_units, probabilities, size=min(step, resamples - start)).astype(np.float64)


def seed_counts(n_seeds: int, resamples: int, seed: int) -> np.ndarray:
    """Return (B, S) draw counts of the seeds: all ones for one seed, else S draws with replacement per replicate.

    The generator is keyed by (seed, S), so two sides with as many seeds draw the same seeds.
    """
    if n_seeds == 1:
        return np.ones((resamples, 1))
    rng = np.random.default_rng([seed, 1, n_seeds])
    return rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=resamples).astype(np.float64)


def replicates(stats: Sequence[UnitStatistics], metrics: Sequence[Sequence[str] | None],
               resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> list[dict[str, np.ndarray]]:
    """Return, per UnitStatistics, {metric: (B,) bootstrap replicates}, all sides resampled with the same W.

    Every side must have the same number of units (they are paired: unit i is the same image).
    metrics[i] names the metrics wanted of side i (None: every metric its reduce returns).
    """
    if not stats:
        return []
    n_units = stats[0].n_units
    if any(s.n_units != n_units for s in stats):
        raise ValueError(f"paired unit statistics differ in their number of units: {[s.n_units for s in stats]}")
    seeds = [seed_counts(s.seeds, resamples, seed) for s in stats]
    width = max(s.seeds * s.n_stats for s in stats)
    parts: list[dict[str, list[np.ndarray]]] = [{} for _ in stats]
    row = 0
    for weights in unit_count_chunks(n_units, resamples, seed, width):
        rows = slice(row, row + len(weights))
        for side, (s, wanted) in enumerate(zip(stats, metrics)):
            with np.errstate(divide="ignore", invalid="ignore"):
                reduced = s.reduce(s.sums(weights))
            for name in (reduced if wanted is None else wanted):
                parts[side].setdefault(name, []).append(seed_mean(reduced[name], seeds[side][rows]))
        row += len(weights)
    return [{name: np.concatenate(chunks) for name, chunks in side.items()} for side in parts]


def stack_seeds(stats: Sequence[UnitStatistics]) -> UnitStatistics:
    """Return one UnitStatistics whose seeds are every seed of stats in order (the same units and task, e.g. one
    benchmark's records of models trained with different seeds); its metric is their mean over seeds and its
    bootstrap draws images and all those seeds. Per-unit correctness (binary) is dropped."""
    if not stats:
        raise ValueError("stack_seeds needs at least one UnitStatistics")
    if len({s.n_units for s in stats}) != 1 or len({s.n_stats for s in stats}) != 1:
        raise ValueError(f"stacked unit statistics differ in units or statistics: "
                         f"{[(s.n_units, s.n_stats) for s in stats]}")
    if not any(is_sparse(s.values) for s in stats):
        return UnitStatistics(np.concatenate([s.values for s in stats], axis=1), stats[0].reduce)
    from scipy import sparse

    blocks = [s.values if is_sparse(s.values) else sparse.csr_matrix(s.values.reshape(s.n_units, -1)) for s in stats]
    return UnitStatistics(sparse.hstack(blocks).tocsr(), stats[0].reduce, seeds=sum(s.seeds for s in stats))


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Return the (low, high) percentiles of the defined replicates at the given level ((NaN, NaN) if none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not values.size:
        return math.nan, math.nan
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(stats: UnitStatistics, metric: str, resamples: int = DEFAULT_RESAMPLES,
                       level: float = DEFAULT_LEVEL, seed: int = DEFAULT_SEED) -> Interval:
    """Return the Interval of one metric: its full-sample value and the percentile-bootstrap interval."""
    value = full_sample(stats, [metric])[metric]
    draws = replicates([stats], [[metric]], resamples, seed)[0][metric]
    low, high = percentile_interval(draws, level) if not math.isnan(value) else (math.nan, math.nan)
    return Interval(value, low, high, level, resamples, seed)


def bootstrap_p_value(deltas: np.ndarray, observed: float) -> float:
    """Return the two-sided bootstrap p-value of an observed delta: (1 + #{|d_b - observed| >= |observed|}) / (1 + B),
    over the defined replicates d_b (NaN if the delta or every replicate is undefined)."""
    deltas = np.asarray(deltas, dtype=np.float64)
    deltas = deltas[~np.isnan(deltas)]
    if math.isnan(observed) or not deltas.size:
        return math.nan
    extreme = np.abs(deltas - observed) >= abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (1 + deltas.size))


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Return McNemar's exact two-sided p-value of two paired per-unit correctness vectors (1 without
    discordant pairs): the binomial test of one discordant count among all discordant pairs at 1/2."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs paired vectors, got shapes {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_test(a: UnitStatistics, b: UnitStatistics, metric: str, resamples: int = DEFAULT_RESAMPLES,
                level: float = DEFAULT_LEVEL, seed: int = DEFAULT_SEED) -> PairedTest:
    """Return the PairedTest of metric(a) - metric(b) over the same units (McNemar where both sides give the
    metric's per-unit correctness, the paired bootstrap otherwise)."""
    draws_a, draws_b = replicates([a, b], [[metric], [metric]], resamples, seed)
    observed = full_sample(a, [metric])[metric] - full_sample(b, [metric])[metric]
    return paired_from_replicates(observed, draws_a[metric] - draws_b[metric], level,
                                  a.binary.get(metric), b.binary.get(metric))


def paired_from_replicates(observed: float, deltas: np.ndarray, level: float = DEFAULT_LEVEL,
                           binary_a: np.ndarray | None = None, binary_b: np.ndarray | None = None) -> PairedTest:
    """Return the PairedTest of an observed delta and its paired bootstrap replicates (McNemar's p-value when
    both per-unit correctness vectors are given)."""
    if math.isnan(observed):
        return PairedTest(math.nan, math.nan, math.nan, math.nan, PAIRED_BOOTSTRAP)
    low, high = percentile_interval(deltas, level)
    if binary_a is not None and binary_b is not None:
        return PairedTest(observed, low, high, mcnemar(binary_a, binary_b), MCNEMAR)
    return PairedTest(observed, low, high, bootstrap_p_value(deltas, observed), PAIRED_BOOTSTRAP)


def holm(p_values: Sequence[float]) -> list[float]:
    """Return Holm's step-down adjusted p-values, in the given order (NaN stays NaN and is not counted)."""
    values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(values.shape, math.nan)
    defined = np.flatnonzero(~np.isnan(values))
    order = defined[np.argsort(values[defined], kind="stable")]
    running, m = 0.0, len(order)
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def nanmean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Return the mean over axis of the non-NaN entries (NaN where there are none), without warnings."""
    values = np.asarray(values, dtype=np.float64)
    defined = ~np.isnan(values)
    count = defined.sum(axis=axis)
    total = np.where(defined, values, 0.0).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Return numerator / denominator elementwise, NaN where the denominator is 0, without warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator != 0, np.asarray(numerator, dtype=np.float64) / denominator, np.nan)
