"""The report as data: scores per row and benchmark, group means, deltas, compute and published rows.

Every output (CSV, Markdown, HTML) is rendered from one Report, so they always agree.
Scores are each benchmark's main metric in %. A group's mean averages all of the group's
benchmarks and is empty when a row lacks one of them (a partial mean would not compare);
`mean` averages every benchmark a row has, as the leaderboard always did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd

from silc_eval.core.errors import UserError
from silc_eval.core.log import warn as warn_stderr
from silc_eval.report.compute import COMPUTE_COLUMNS, compute_by_model
from silc_eval.report.intervals import FolderBootstrap
from silc_eval.report.order import order_benchmarks, order_groups
from silc_eval.report.published import PublishedEntry, published_main_scores
from silc_eval.report.tables import MEAN_COLUMN, leaderboard_table

OWN_SOURCE = "silc-eval"
PUBLISHED_SOURCE = "published"


@dataclass
class Report:
    """Everything a report shows; rows are model names (ours first) then published labels."""

    scores: pd.DataFrame                 # rows x benchmarks, main metric in %
    groups: dict[str, list[str]]         # group -> its benchmarks, both in report order
    main_metrics: dict[str, str]         # benchmark -> main metric name
    tasks: dict[str, str]                # benchmark -> task
    compute: pd.DataFrame                # rows x COMPUTE_COLUMNS (NaN where unknown)
    sources: pd.Series                   # row -> OWN_SOURCE or PUBLISHED_SOURCE
    records: list[dict[str, Any]]
    baseline: str | None = None
    published: list[PublishedEntry] = field(default_factory=list)   # every loaded entry (shown or not)
    published_rows: dict[str, PublishedEntry] = field(default_factory=dict)  # row label -> entry shown there
    bootstrap: FolderBootstrap | None = None  # intervals and paired differences from the sidecars (if computed)

    @property
    def benchmarks(self) -> list[str]:
        """Return the benchmark columns in report order."""
        return list(self.scores.columns)

    @property
    def own_models(self) -> list[str]:
        """Return the rows that are our own evaluated models, in order."""
        return [row for row in self.scores.index if self.sources[row] == OWN_SOURCE]

    def group_means(self) -> pd.DataFrame:
        """Return rows x groups: the mean over all of a group's benchmarks (NaN if one is missing)."""
        return pd.DataFrame({group: self.scores[names].mean(axis=1, skipna=False)
                             for group, names in self.groups.items()}, index=self.scores.index)

    def mean(self) -> pd.Series:
        """Return each row's mean over the benchmarks it has (NaN when it has none)."""
        return self.scores.mean(axis=1, skipna=True)

    def wide(self) -> pd.DataFrame:
        """Return rows x (benchmarks, groups, mean): every number a delta can be taken of."""
        groups = self.group_means()
        table = pd.concat([self.scores, groups], axis=1)
        table[MEAN_COLUMN] = self.mean()
        return table

    def deltas(self) -> pd.DataFrame | None:
        """Return rows x (benchmarks, groups, mean) minus the baseline's row, in pp (None without a baseline)."""
        if self.baseline is None:
            return None
        wide = self.wide()
        return wide - wide.loc[self.baseline]

    def interval(self, row: str, benchmark: str):
        """Return the Interval of a row's main metric on a benchmark (fractions), or None."""
        if self.bootstrap is None or benchmark not in self.main_metrics:
            return None
        return self.bootstrap.intervals.get((row, benchmark, self.main_metrics[benchmark]))

    def difference(self, row: str, benchmark: str):
        """Return the paired Difference of a row to the baseline on a benchmark's main metric, or None."""
        return None if self.bootstrap is None else self.bootstrap.differences.get((row, benchmark))

    def is_published(self, row: str) -> bool:
        """Return whether a row holds published numbers rather than one of our evaluated models."""
        return row in self.published_rows


def benchmark_facts(records: Sequence[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Return ({benchmark: group}, {benchmark: main metric}, {benchmark: task}) from records (last record wins)."""
    group_of, main, task = {}, {}, {}
    for record in records:
        name = record["benchmark"]["name"]
        group_of[name], main[name] = record["benchmark"]["group"], record["benchmark"]["main_metric"]
        task[name] = record["benchmark"]["task"]
    return group_of, main, task


def build_report(records: Sequence[dict[str, Any]], model_order: Sequence[str] | None = None,
                 benchmark_order: Sequence[str] | None = None, baseline: str | None = None,
                 published: Sequence[PublishedEntry] = (),
                 warn: Callable[[str], None] = warn_stderr) -> Report:
    """Return the Report of records (+ published rows sharing a benchmark with them); a bad baseline is a UserError."""
    group_of, main_metrics, tasks = benchmark_facts(records)
    benchmarks = order_benchmarks(group_of, benchmark_order)
    own = leaderboard_table(records, model_order, benchmarks).drop(columns=[MEAN_COLUMN])
    if baseline is not None and baseline not in own.index:
        raise UserError(f"baseline model '{baseline}' is not in the results; expected one of {', '.join(own.index)}")
    compute = compute_by_model(records, warn)
    rows = {model: own.loc[model].tolist() for model in own.index}
    sources = {model: OWN_SOURCE for model in own.index}
    published_rows = {}
    compute_rows = {model: [compute[model][c] for c in COMPUTE_COLUMNS] for model in own.index}
    for entry in published:
        values = published_main_scores(entry, {b: main_metrics[b] for b in benchmarks})
        if all(math.isnan(v) for v in values.values()):
            continue
        label = entry.label if entry.label not in rows else f"{entry.label} [published]"
        rows[label] = [values[b] for b in benchmarks]
        sources[label] = PUBLISHED_SOURCE
        published_rows[label] = entry
        compute_rows[label] = [math.nan] * len(COMPUTE_COLUMNS)
    index = pd.Index(list(rows), name="model")
    groups = {g: [b for b in benchmarks if group_of[b] == g] for g in order_groups(list(group_of.values()))}
    return Report(scores=pd.DataFrame(list(rows.values()), index=index, columns=benchmarks, dtype=float),
                  groups=groups, main_metrics=main_metrics, tasks=tasks,
                  compute=pd.DataFrame(list(compute_rows.values()), index=index, columns=COMPUTE_COLUMNS,
                                       dtype=float),
                  sources=pd.Series(sources), records=list(records), baseline=baseline, published=list(published),
                  published_rows=published_rows)
