"""The display tables of a report (text cells), shared by the Markdown and HTML renderers.

Layout: a summary table (compute columns, one mean per group, the overall mean), then one
table per group (each benchmark's main metric, and the group mean when the group has more
than one benchmark), then, with published numbers, the long list of them with sources.
With a baseline, every cell of another row reads `value (+delta)` in percentage points. Where the
records' sidecars give intervals, a benchmark's cell reads `value ± half-width` and a delta that is
significant after Holm's correction is marked `*`; a table of the paired differences follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from silc_eval.report.build import Report
from silc_eval.report.tables import MEAN_COLUMN

MISSING = "—"
ROW_OWN, ROW_BASELINE, ROW_PUBLISHED = "own", "baseline", "published"
COMPUTE_HEADERS = {"images_seen": "images seen", "training_flops": "training FLOPs"}


@dataclass
class DisplayTable:
    """A titled table of text cells; kinds[i] says what row i is (own, baseline or published)."""

    key: str
    title: str
    header: list[str]
    rows: list[list[str]]
    kinds: list[str]
    numeric: list[bool]          # per column: right-aligned numbers
    notes: list[str] = field(default_factory=list)


def score_cell(value: float, delta: float | None = None, half_width: float | None = None,
               significant: bool = False) -> str:
    """Return a score in % with 2 decimals, ± the half-width of its interval and its delta in pp (marked *
    when significant) when given, or an em dash when missing."""
    if value is None or math.isnan(value):
        return MISSING
    text = f"{value:.2f}"
    if half_width is not None and not math.isnan(half_width):
        text += f" ± {half_width:.2f}"
    if delta is None or math.isnan(delta):
        return text
    return f"{text} ({delta:+.2f}{'*' if significant else ''})"


def half_width(report: Report, row: str, column: str) -> float | None:
    """Return half the width of the interval of a row's main metric on a benchmark column, in pp (or None)."""
    interval = report.interval(row, column)
    return None if interval is None else 50.0 * (interval.high - interval.low)


def compute_cell(column: str, value: float) -> str:
    """Return images seen with thousands separators, FLOPs in scientific notation, or an em dash."""
    if value is None or math.isnan(value):
        return MISSING
    return f"{int(value):,}" if column == "images_seen" else f"{value:.3g}"


def row_kind(report: Report, row: str) -> str:
    """Return ROW_PUBLISHED, ROW_BASELINE or ROW_OWN for a row of the report."""
    if report.is_published(row):
        return ROW_PUBLISHED
    return ROW_BASELINE if row == report.baseline else ROW_OWN


def row_label(report: Report, row: str) -> str:
    """Return the first cell of a row: its name, with '(baseline)' on the baseline row."""
    return f"{row} (baseline)" if row == report.baseline else row


def with_source(report: Report) -> bool:
    """Return whether tables carry a source column (only when published rows are shown)."""
    return bool(report.published_rows)


def value_cells(report: Report, row: str, columns: list[str], wide: pd.DataFrame,
                deltas: pd.DataFrame | None) -> list[str]:
    """Return the score cells of one row for the given wide-table columns (with deltas when there is a baseline)."""
    show_delta = deltas is not None and row != report.baseline
    cells = []
    for c in columns:
        difference = report.difference(row, c) if show_delta else None
        cells.append(score_cell(wide.at[row, c], deltas.at[row, c] if show_delta else None,
                                half_width(report, row, c), bool(difference and difference.significant)))
    return cells


def lead_cells(report: Report, row: str) -> list[str]:
    """Return the model cell (and the source cell when published rows are shown) of a row."""
    cells = [row_label(report, row)]
    if with_source(report):
        cells.append(report.sources[row])
    return cells


def lead_header(report: Report) -> list[str]:
    """Return the header cells matching lead_cells."""
    return ["model"] + (["source"] if with_source(report) else [])


def summary_table(report: Report, wide: pd.DataFrame, deltas: pd.DataFrame | None) -> DisplayTable:
    """Return the summary: compute columns, each group's mean, and the overall mean."""
    groups = list(report.groups)
    header = lead_header(report) + [COMPUTE_HEADERS[c] for c in report.compute.columns] + groups + [MEAN_COLUMN]
    rows, total, partial = [], report.scores.shape[1], False
    for row in report.scores.index:
        compute = [compute_cell(c, report.compute.at[row, c]) for c in report.compute.columns]
        cells = value_cells(report, row, groups + [MEAN_COLUMN], wide, deltas)
        present = int(report.scores.loc[row].notna().sum())
        if 0 < present < total:  # the mean of a row that lacks benchmarks is not the others' mean: say so
            cells[-1] += f" ({present} of {total})"
            partial = True
        rows.append(lead_cells(report, row) + compute + cells)
    numeric = [False] * len(lead_header(report)) + [True] * (len(header) - len(lead_header(report)))
    notes = ["A group's mean averages all of its benchmarks (— where a row lacks one); `mean` averages every "
             "benchmark a row has. Compute comes from the model card of the evaluated weights."]
    if partial:
        notes.append("(k of N) after a mean: the row has scores on only k of the N benchmarks, so its mean is "
                     "partial and not comparable with a full one.")
    return DisplayTable("summary", "Summary", header, rows, [row_kind(report, r) for r in report.scores.index],
                        numeric, notes)


def group_table(report: Report, group: str, wide: pd.DataFrame, deltas: pd.DataFrame | None) -> DisplayTable:
    """Return one group's table: its benchmarks' main metrics and, for several benchmarks, the group mean."""
    benchmarks = report.groups[group]
    columns = benchmarks + ([group] if len(benchmarks) > 1 else [])
    header = lead_header(report) + [f"{b} ({report.main_metrics[b]})" for b in benchmarks]
    header += [f"{group} mean"] if len(benchmarks) > 1 else []
    rows, kinds = [], []
    for row in report.scores.index:
        if wide.loc[row, columns].isna().all():
            continue  # a published row with nothing in this group
        rows.append(lead_cells(report, row) + value_cells(report, row, columns, wide, deltas))
        kinds.append(row_kind(report, row))
    numeric = [False] * len(lead_header(report)) + [True] * len(columns)
    return DisplayTable(f"group-{group}", group[:1].upper() + group[1:], header, rows, kinds, numeric,
                        interval_notes(report, benchmarks))


def interval_notes(report: Report, benchmarks: list[str]) -> list[str]:
    """Return the notes under a group table: what its * marks mean (when it shows tested differences)."""
    rows = report.scores.index
    return [significance_note(report)] if any(report.difference(r, b) for r in rows for b in benchmarks) else []


def significance_note(report: Report) -> str:
    """Return the sentence that says what a * on a delta means."""
    family = max(sum(1 for b in report.benchmarks if report.difference(r, b)) for r in report.own_models)
    return (f"* the difference to {report.baseline} is significant at {report.bootstrap.settings.alpha:g} after "
            f"Holm's correction across the {family} benchmarks compared for each model (paired over the same "
            f"images: McNemar's exact test for per-image correctness, a paired bootstrap otherwise); ± is half "
            f"the width of the score's {100 * report.bootstrap.settings.level:g}% interval.")


def differences_table(report: Report) -> DisplayTable:
    """Return one row per paired difference to the baseline: delta, interval, p-value, Holm p-value, test."""
    level = report.bootstrap.settings.level
    header = ["model", "benchmark", "metric", "delta (pp)", f"{100 * level:g}% interval (pp)", "p", "Holm p", "test"]
    rows = []
    for row in report.own_models:
        for benchmark in report.benchmarks:
            d = report.difference(row, benchmark)
            if d is None:
                continue
            mark = "*" if d.significant else ""
            rows.append([row, benchmark, d.metric, f"{100 * d.delta:+.2f}{mark}",
                         f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}]", f"{d.p_value:.3g}", f"{d.p_holm:.3g}", d.test])
    return DisplayTable("differences", f"Paired differences to {report.baseline}", header, rows, [ROW_OWN] * len(rows),
                        [False, False, False, True, True, True, True, False], [significance_note(report)])


def published_list(report: Report) -> DisplayTable:
    """Return one row per loaded published entry: its numbers (in %), whether verified, source and protocol."""
    header = ["method", "backbone", "numbers (%)", "verified", "source", "protocol"]
    rows = []
    for entry in report.published:
        numbers = "; ".join(f"{benchmark} {metric} {value:.2f}" for benchmark, metrics in entry.scores.items()
                            for metric, value in metrics.items())
        source = entry.source + (f" ({entry.note})" if entry.note else "")
        rows.append([entry.method, entry.backbone, numbers, "yes" if entry.verified else "no", source,
                     entry.protocol])
    notes = [f"{len(report.published)} published entries; {len(report.published_rows)} share a benchmark with these "
             f"results and appear as rows marked 'published' above. 'verified: no' means the source text was not "
             f"re-read here."]
    return DisplayTable("published", "Published numbers", header, rows, [ROW_PUBLISHED] * len(rows),
                        [False] * len(header), notes)


def display_tables(report: Report) -> list[DisplayTable]:
    """Return the report's tables in order: summary, one per group, then published numbers if loaded."""
    wide, deltas = report.wide(), report.deltas()
    tables = [summary_table(report, wide, deltas)]
    tables += [group_table(report, group, wide, deltas) for group in report.groups]
    if report.bootstrap is not None and report.bootstrap.differences:
        tables.append(differences_table(report))
    if report.published:
        tables.append(published_list(report))
    return tables


def intro_lines(report: Report) -> list[str]:
    """Return the sentences that head a report: units, baseline, counts."""
    lines = [f"Main metric of each benchmark, in %; {len(report.own_models)} models, {len(report.benchmarks)} "
             f"benchmarks, {len(report.records)} result records."]
    if report.baseline:
        lines.append(f"In parentheses: the difference to the baseline {report.baseline}, in percentage points.")
    boot = report.bootstrap
    if boot is not None and boot.intervals:
        lines.append(boot.settings.describe())
    if boot is not None and boot.without_sidecar:
        lines.append(f"{len(boot.without_sidecar)} records have no per-sample sidecar this version can read, so no "
                     f"interval (e.g. {boot.without_sidecar[0]}).")
    return lines
