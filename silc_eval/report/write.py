"""Write the report files of a results folder from its records (CSV, Markdown, HTML), atomically.

csv:  results.csv (every metric, raw fractions, with ci_low / ci_high where an interval was computed),
      leaderboard.csv (rows x benchmarks + mean, in %), groups.csv (compute columns, one mean per group,
      mean), deltas.csv (with a baseline: one row per model and column, pp, with the paired intervals and
      p-values of the benchmarks)
md:   leaderboard.md        html: report.html (self-contained)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from silc_eval.core.errors import UserError, WriteError
from silc_eval.core.io import atomic_write_text
from silc_eval.core.log import warn as warn_stderr
from silc_eval.report.build import Report, build_report
from silc_eval.report.intervals import IntervalSettings, bootstrap_folder
from silc_eval.report.records import load_result_records
from silc_eval.report.tables import MEAN_COLUMN, results_table

FORMATS = ("md", "csv", "html")
FILES = {"results_csv": "results.csv", "leaderboard_csv": "leaderboard.csv", "groups_csv": "groups.csv",
         "deltas_csv": "deltas.csv", "leaderboard_md": "leaderboard.md", "report_html": "report.html"}


def parse_formats(text: str) -> tuple[str, ...]:
    """Return the formats of a comma-separated --format value; an unknown one is a UserError."""
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"unknown report format '{unknown[0] if unknown else text}'; expected a comma-separated "
                        f"subset of {','.join(FORMATS)}")
    return formats


def with_source_column(report: Report, table: pd.DataFrame) -> pd.DataFrame:
    """Return table with a leading 'source' column when published rows are present (else table unchanged)."""
    if not report.published_rows:
        return table
    sources = [report.published_rows[r].source if report.is_published(r) else report.sources[r] for r in table.index]
    return pd.concat([pd.DataFrame({"source": sources}, index=table.index), table], axis=1)


def csv_tables(report: Report) -> dict[str, pd.DataFrame]:
    """Return {file key: table} for leaderboard.csv, groups.csv and (with a baseline) deltas.csv."""
    leaderboard = report.scores.copy()
    leaderboard[MEAN_COLUMN] = report.mean()
    compute = report.compute.copy()
    compute["images_seen"] = compute["images_seen"].round().astype("Int64")
    groups = pd.concat([compute, report.group_means()], axis=1)
    groups[MEAN_COLUMN] = report.mean()
    tables = {"leaderboard_csv": with_source_column(report, leaderboard),
              "groups_csv": with_source_column(report, groups)}
    deltas = report.deltas()
    if deltas is not None:
        tables["deltas_csv"] = with_source_column(report, long_deltas(report, deltas))
    return tables


DELTA_COLUMNS = ["column", "kind", "metric", "delta_pp", "ci_low_pp", "ci_high_pp", "p_value", "test", "p_holm",
                 "significant"]


def long_deltas(report: Report, deltas: pd.DataFrame) -> pd.DataFrame:
    """Return one row per (row other than the baseline, benchmark / group / mean column): the delta in pp and,
    for a benchmark with sidecars on both sides, the paired interval (pp), p-value, test and Holm p-value."""
    rows, index = [], []
    for row in deltas.index:
        if row == report.baseline:
            continue
        for column in deltas.columns:
            kind = "benchmark" if column in report.benchmarks else ("mean" if column == MEAN_COLUMN else "group")
            d = report.difference(row, column) if kind == "benchmark" else None
            rows.append([column, kind, report.main_metrics.get(column, "") if kind == "benchmark" else "",
                         deltas.at[row, column], *((100 * d.low, 100 * d.high, d.p_value, d.test, d.p_holm,
                                                    d.significant) if d else (None,) * 6)])
            index.append(row)
    return pd.DataFrame(rows, index=pd.Index(index, name="model"), columns=DELTA_COLUMNS)


def results_with_intervals(report: Report) -> pd.DataFrame:
    """Return results.csv: every metric of the records, with ci_low / ci_high and how they were computed where
    an interval exists (the main metrics, and those asked for)."""
    table = results_table(report.records)
    found = report.bootstrap.intervals if report.bootstrap is not None else {}
    keys = zip(table["model"], table["benchmark"], table["metric"])
    intervals = [found.get(key) for key in keys]
    table["ci_low"] = [i.low if i else None for i in intervals]
    table["ci_high"] = [i.high if i else None for i in intervals]
    table["ci_method"] = [i.method if i else None for i in intervals]
    table["ci_level"] = [i.level if i else None for i in intervals]
    table["ci_resamples"] = pd.array([i.resamples if i else None for i in intervals], dtype="Int64")
    table["ci_seed"] = pd.array([i.seed if i else None for i in intervals], dtype="Int64")
    return table


def write_reports(output: Path, model_order: Sequence[str] | None = None,
                  benchmark_order: Sequence[str] | None = None, baseline: str | None = None,
                  formats: Sequence[str] = FORMATS, published=(), strict: bool = False,
                  warn: Callable[[str], None] = warn_stderr,
                  intervals: IntervalSettings | None = None) -> dict[str, Path]:
    """Build the report from the records under output and write the asked formats there; returns {kind: path}.

    Intervals (and, with a baseline, paired tests) are recomputed from the records' sidecars under the
    given settings (default: 1,000 resamples, 95%, seed 0; resamples 0 switches them off).

    A stale deltas.csv is removed when no baseline is given, so no file contradicts the others.
    """
    output = Path(output)
    records = load_result_records(output, strict=strict, warn=warn)
    report = build_report(records, model_order, benchmark_order, baseline, published, warn)
    report.bootstrap = bootstrap_folder(output, records, intervals or IntervalSettings(), baseline)
    written: dict[str, Path] = {}

    def put(key: str, text: str) -> None:
        written[key] = output / FILES[key]
        atomic_write_text(written[key], text)

    if "csv" in formats:
        put("results_csv", results_with_intervals(report).to_csv(index=False, float_format="%.6f"))
        for key, table in csv_tables(report).items():
            put(key, table.to_csv(float_format="%.4f"))
        if baseline is None:
            stale = output / FILES["deltas_csv"]
            try:
                stale.unlink(missing_ok=True)
            except OSError as exc:
                raise WriteError(stale, exc) from None
    if "md" in formats:
        from silc_eval.report.markdown import render_markdown

        put("leaderboard_md", render_markdown(report))
    if "html" in formats:
        from silc_eval.report.html import render_html

        put("report_html", render_html(report))
    return written
