"""`silc-eval check`: compare the records of a run with reference scores and flag regressions.

Every (model, benchmark, metric) of the records is compared with its reference score. A score
lower than its reference by more than the tolerance is a regression (exit code 1); higher by more
than the tolerance, an improvement (reversed for a metric whose record says lower is better);
metrics without a better direction (a spread over seeds) that move beyond the tolerance are
`changed`. Neither of those two fails the check. The direction of each metric comes from its
record (`metric_directions`, declared by the task); records of schema v1 carry none, and there
metrics named `*_std` count as having no direction.
References without a result and results without a reference are listed as missing.

Noise-aware (report/check_intervals.py): with `--reference-run DIR` (a results folder with sidecars)
the references are that run's records, and a score is a regression only when the paired bootstrap
interval of its difference lies entirely below minus the tolerance (an improvement: entirely above
it). Against plain reference scores, every listed row shows its score's bootstrap interval.

Tolerances are absolute, in the records' units (fractions): `0.003` or `0.3pp` is 0.3
percentage points. `--tolerance VALUE` sets the default (0.003); `--tolerance PATTERN=VALUE`
sets it for metrics matching PATTERN, a glob over the metric name (`mIoU`, `acc1*`) or
`SCOPE:METRIC` where SCOPE is a glob over the benchmark name, its task or its group
(`linear_probe:*`, `synthscenes-linear-seg:mIoU`). The last matching PATTERN wins; then a
reference file's own `tolerance` column; then the default.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Callable, Iterable, Sequence

from silc_eval.core.errors import UserError
from silc_eval.core.log import warn as warn_stderr
from silc_eval.report.check_intervals import (
    noise_aware,
    run_references,
    with_result_intervals,
)
from silc_eval.report.intervals import IntervalSettings
from silc_eval.report.records import load_result_records
from silc_eval.report.references import (
    Reference,
    parse_fraction,
    published_references,
    read_reference_file,
    zoo_references,
)

DEFAULT_TOLERANCE = 0.003
V1_UNDIRECTED_METRICS = ("*_std",)  # for schema-v1 records, which carry no metric directions
STATUS_ORDER = ("regression", "changed", "improvement", "missing result", "missing reference", "ok")
ALL = "*"


# ----------------------------------------------------------------------------- tolerances

@dataclass(frozen=True)
class Tolerances:
    """The default tolerance and the per-metric rules (scope glob or None, metric glob, value), in order."""

    default: float = DEFAULT_TOLERANCE
    rules: tuple[tuple[str | None, str, float], ...] = ()

    def for_score(self, benchmark: str, task: str, group: str, metric: str, row_tolerance: float | None) -> float:
        """Return the tolerance of one score: last matching rule, else the reference row's, else the default."""
        for scope, pattern, value in reversed(self.rules):
            in_scope = scope is None or any(fnmatchcase(name, scope) for name in (benchmark, task, group))
            if in_scope and fnmatchcase(metric, pattern):
                return value
        return self.default if row_tolerance is None else row_tolerance


def parse_tolerances(values: Sequence[str]) -> Tolerances:
    """Return the Tolerances of --tolerance values (VALUE or [SCOPE:]METRIC=VALUE); a bad one is a UserError."""
    default, rules = DEFAULT_TOLERANCE, []
    for text in values:
        where = f"--tolerance {text}"
        if "=" not in text:
            default = parse_fraction(text, where, allow_nan=False)
            continue
        pattern, _, value = text.rpartition("=")
        scope, _, metric = pattern.rpartition(":") if ":" in pattern else (None, "", pattern)
        if not metric.strip() or (scope is not None and not scope.strip()):
            raise UserError(f"{where}: expected VALUE or [SCOPE:]METRIC=VALUE, e.g. 0.3pp, mIoU=0.01, "
                            f"linear_probe:*=0.02")
        rules.append((scope.strip() if scope is not None else None, metric.strip(),
                      parse_fraction(value, where, allow_nan=False)))
    return Tolerances(default, tuple(rules))


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Score:
    """One metric of one record."""

    model: str
    model_sha256: str
    benchmark: str
    task: str
    group: str
    metric: str
    value: float
    direction: str = "higher"


def metric_direction(record: dict, metric: str) -> str:
    """Return the direction of a record's metric: from its metric_directions, else (v1) by name."""
    declared = record.get("metric_directions")
    if isinstance(declared, dict) and declared.get(metric) in ("higher", "lower", "none"):
        return declared[metric]
    return "none" if any(fnmatchcase(metric, p) for p in V1_UNDIRECTED_METRICS) else "higher"


def read_scores(results_dir: Path, strict: bool = False,
                warn: Callable[[str], None] = warn_stderr) -> list[Score]:
    """Return the scores (one per metric) of every valid record under results_dir/records.

    A malformed or foreign JSON is named through warn and skipped, or is a UserError when strict.
    """
    return scores_of(load_result_records(results_dir, strict=strict, warn=warn))


def scores_of(records: Sequence[dict]) -> list[Score]:
    """Return the scores (one per metric) of records."""
    scores = []
    for record in records:
        model, benchmark = record["model"], record["benchmark"]
        for metric, value in sorted(record["metrics"].items()):
            scores.append(Score(model["name"], model["sha256"], benchmark["name"], benchmark["task"],
                                benchmark["group"], metric, math.nan if value is None else float(value),
                                metric_direction(record, metric)))
    return scores


# ----------------------------------------------------------------------------- comparison

@dataclass(frozen=True)
class Row:
    """One line of the check table."""

    status: str
    model: str
    benchmark: str
    metric: str
    reference: float | None = None
    result: float | None = None
    tolerance: float | None = None
    note: str = ""
    record_model: str = ""                       # the record's model name (after --match), to find its sidecar
    direction: str = "higher"
    interval: tuple[float, float] | None = None  # bootstrap interval: of the delta (paired) or of the result
    paired: bool = False                         # whether interval is that of a paired difference


def classify(direction: str, reference: float, result: float, tolerance: float) -> str:
    """Return 'ok', 'regression', 'improvement' or 'changed' for one score against its reference, given
    which direction of the metric is better ('higher', 'lower' or 'none')."""
    if math.isnan(reference) or math.isnan(result):
        if math.isnan(reference) and math.isnan(result):
            return "ok"
        return "regression" if math.isnan(result) else "changed"
    delta = result - reference
    if abs(delta) <= tolerance + 1e-12:
        return "ok"
    if direction == "none":
        return "changed"
    better = delta > 0 if direction == "higher" else delta < 0
    return "improvement" if better else "regression"


def reference_models(scores: Sequence[Score],
                     references: Sequence[Reference]) -> dict[tuple[str, str], tuple[str | None, str]]:
    """Return {(record model name, sha256): (reference model name or None, note)} for the scores' models.

    A reference pinned to a sha256 matches records with those weights, whatever their name; a
    record named like a pinned reference but with other weights matches nothing (the note says so).
    """
    by_sha = {r.model_sha256: r.model for r in references if r.model_sha256}
    pinned = {r.model for r in references if r.model_sha256}
    found = {}
    for score in scores:
        key = (score.model, score.model_sha256)
        if key in found:
            continue
        if score.model_sha256 in by_sha:
            found[key] = (by_sha[score.model_sha256], "")
        elif score.model in pinned and score.model_sha256:  # a --match rename carries no sha256: match by name
            found[key] = (None, "weights differ from the reference's sha256")
        else:
            found[key] = (score.model, "")
    return found


def _count(n: int, noun: str) -> str:
    """Return 'n noun' with the noun in the plural unless n is 1."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _missing_rows(status: str, keys: Iterable[tuple[str, str, str]], present_models: set[str],
                  present_pairs: set[tuple[str, str]], notes: dict[str, str]) -> list[Row]:
    """Return rows for missing (model, benchmark, metric) keys, one per absent model or benchmark.

    notes: {model: why} appended to that model's rows.
    """
    by_model: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for model, benchmark, metric in keys:
        by_model[model].append((benchmark, metric))
    rows = []
    for model, items in sorted(by_model.items()):
        why = f"; {notes[model]}" if notes.get(model) else ""
        if model not in present_models:
            benchmarks = {b for b, _ in items}
            rows.append(Row(status, model, ALL, ALL,
                            note=f"{_count(len(benchmarks), 'benchmark')}, {_count(len(items), 'score')}{why}"))
            continue
        per_benchmark: dict[str, list[str]] = defaultdict(list)
        for benchmark, metric in items:
            per_benchmark[benchmark].append(metric)
        for benchmark, metrics in sorted(per_benchmark.items()):
            if (model, benchmark) not in present_pairs:
                rows.append(Row(status, model, benchmark, ALL, note=_count(len(metrics), "metric") + why))
            else:
                rows.extend(Row(status, model, benchmark, metric, note=why[2:]) for metric in sorted(metrics))
    return rows


def compare(scores: Sequence[Score], references: Sequence[Reference], tolerances: Tolerances) -> list[Row]:
    """Return one row per compared score plus rows for the missing ones, in STATUS_ORDER then name order."""
    refs = {(r.model, r.benchmark, r.metric): r for r in references}
    ref_models, ref_pairs = {r.model for r in references}, {(r.model, r.benchmark) for r in references}
    identity = reference_models(scores, references)
    matched, unmatched, notes, rows = set(), [], {}, []
    for score in scores:
        model, note = identity[(score.model, score.model_sha256)]
        ref = refs.get((model, score.benchmark, score.metric))
        if ref is None:
            unmatched.append((score.model, score.benchmark, score.metric))
            notes[score.model] = note
            continue
        matched.add((ref.model, ref.benchmark, ref.metric))
        tolerance = tolerances.for_score(score.benchmark, score.task, score.group, score.metric, ref.tolerance)
        shown = ref.model if ref.model == score.model else f"{score.model} (as {ref.model})"
        rows.append(Row(classify(score.direction, ref.value, score.value, tolerance), shown, score.benchmark,
                        score.metric, ref.value, score.value, tolerance, record_model=score.model,
                        direction=score.direction))
    mapped = [(identity[(s.model, s.model_sha256)][0], s) for s in scores]
    rows += _missing_rows("missing result", (k for k in refs if k not in matched), {m for m, _ in mapped},
                          {(m, s.benchmark) for m, s in mapped}, {})
    rows += _missing_rows("missing reference", unmatched, {s.model for m, s in mapped if m in ref_models},
                          {(s.model, s.benchmark) for m, s in mapped if (m, s.benchmark) in ref_pairs},
                          {name: note for name, note in notes.items() if note})
    return sorted(rows, key=lambda r: (STATUS_ORDER.index(r.status), r.model, r.benchmark, r.metric))


# ----------------------------------------------------------------------------- the table

def _percent(value: float | None, signed: bool = False) -> str:
    """Return a fraction as a percentage with two decimals ('' for None)."""
    if value is None:
        return ""
    return "nan" if math.isnan(value) else f"{100 * value:{'+' if signed else ''}.2f}"


def _interval(row: Row) -> str:
    """Return a row's interval as '[low,high]' (pp for a paired delta, % for a result; '' without one)."""
    if row.interval is None:
        return ""
    low, high = row.interval
    return f"[{_percent(low, signed=row.paired)},{_percent(high, signed=row.paired)}]"


def format_table(rows: Sequence[Row], level: float = 0.95) -> str:
    """Return rows as an aligned text table (values in %, delta and tolerance in percentage points), with an
    interval column when a row has one (of the delta, or of the result)."""
    intervals = any(row.interval is not None for row in rows)
    paired = any(row.paired for row in rows)
    header = ("status", "model", "benchmark", "metric", "reference %", "result %", "delta pp", "tol pp")
    header += ((f"delta {100 * level:g}% CI pp" if paired else f"result {100 * level:g}% CI %",) if intervals
               else ()) + ("note",)
    lines = [header]
    for row in rows:
        delta = (row.result - row.reference) if row.result is not None and row.reference is not None else None
        lines.append((row.status.upper() if row.status == "regression" else row.status, row.model, row.benchmark,
                      row.metric, _percent(row.reference), _percent(row.result), _percent(delta, signed=True),
                      _percent(row.tolerance)) + ((_interval(row),) if intervals else ()) + (row.note,))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = set(range(4, len(header) - 1))
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))).rstrip() for line in lines)


def summary(rows: Sequence[Row], source: str) -> str:
    """Return the one-line verdict: counts per status and whether the check passed."""
    counts = {status: sum(1 for r in rows if r.status == status) for status in STATUS_ORDER}
    compared = sum(counts[s] for s in ("regression", "changed", "improvement", "ok"))
    verdict = "FAILED" if counts["regression"] else "passed"
    return (f"check {verdict}: {compared} scores compared with {source}: {counts['ok']} within tolerance, "
            f"{counts['regression']} regressions, {counts['improvement']} improvements, {counts['changed']} changed; "
            f"missing: {counts['missing result']} results, {counts['missing reference']} references")


# ----------------------------------------------------------------------------- the command

def parse_matches(values: Sequence[str]) -> dict[str, str]:
    """Return {record model name: reference model name} from --match RECORD=REFERENCE values."""
    matches = {}
    for text in values:
        record_model, sep, reference_model = text.partition("=")
        if not sep or not record_model.strip() or not reference_model.strip():
            raise UserError(f"--match {text}: expected RECORD_MODEL=REFERENCE_MODEL, e.g. "
                            f"'ViT-B-16:openai.pt=OpenAI CLIP (ViT-B-16 (openai))'")
        matches[record_model.strip()] = reference_model.strip()
    return matches


def renamed(scores: Sequence[Score], matches: dict[str, str]) -> list[Score]:
    """Return scores with each model named as --match says (weights pins no longer apply to those)."""
    return [replace(s, model=matches[s.model], model_sha256="") if s.model in matches else s for s in scores]


@dataclass
class CheckOutcome:
    """What `silc-eval check` found: the rows, the text to print and the exit code (1 on a regression)."""

    rows: list[Row]
    text: str
    exit_code: int = 0


def run_check(results_dir: Path, reference: Path | None = None, published: bool = False,
              tolerances: Sequence[str] = (), matches: Sequence[str] = (), strict: bool = False,
              warn: Callable[[str], None] = warn_stderr, reference_run: Path | None = None,
              intervals: IntervalSettings | None = None) -> CheckOutcome:
    """Return the outcome of checking results_dir against the zoo cards, a reference file, published numbers
    or (noise-aware, paired over the same images) the records of a reference run.

    Skipped record files are named through warn. Listed scores carry their bootstrap interval where the
    records have sidecars (intervals: the settings; resamples 0 switches them off).
    """
    parsed, aliases = parse_tolerances(tolerances), parse_matches(matches)
    settings = intervals or IntervalSettings()
    if sum([reference is not None, published, reference_run is not None]) > 1:
        raise UserError("--reference, --published and --reference-run are alternatives; give one of them")
    records = load_result_records(results_dir, strict=strict, warn=warn)
    scores = renamed(scores_of(records), aliases)
    if reference_run is not None:
        return _check_against_run(results_dir, records, scores, Path(reference_run), parsed, aliases, settings,
                                  strict, warn)
    if reference is not None:
        references, source = read_reference_file(reference), str(reference)
    elif published:
        references, source = published_references(), "the published numbers"
    else:
        references, source = zoo_references(), "the zoo cards' reference scores"
    rows = with_result_intervals(compare(scores, references, parsed), results_dir, records, settings, aliases)
    return _outcome(rows, source, settings)


def _outcome(rows: list[Row], source: str, settings: IntervalSettings, notes: Sequence[str] = ()) -> CheckOutcome:
    listed = [r for r in rows if r.status != "ok"]
    text = (format_table(listed, settings.level) + "\n" if listed else "") + "".join(f"{n}\n" for n in notes)
    text += summary(rows, source)
    return CheckOutcome(rows, text, 1 if any(r.status == "regression" for r in rows) else 0)


def _check_against_run(results_dir: Path, records: Sequence[dict], scores: Sequence[Score], reference_run: Path,
                       tolerances: Tolerances, aliases: dict[str, str], settings: IntervalSettings, strict: bool,
                       warn: Callable[[str], None]) -> CheckOutcome:
    """Return the noise-aware outcome of checking records against the records of reference_run (paired)."""
    from silc_eval.report.paired import pair_runs

    if not settings.enabled:
        raise UserError("--reference-run needs resamples to judge differences; expected --resamples > 0")
    reference_records = load_result_records(reference_run, strict=strict, warn=warn)
    source = f"the reference run {reference_run}"
    rows = compare(scores, run_references(reference_records, str(reference_run)), tolerances)
    differences = pair_runs(results_dir, records, reference_run, reference_records, settings, every_metric=True,
                            aliases=aliases)
    note = (f"A score regresses only when the {100 * settings.level:g}% paired-bootstrap interval of its "
            f"difference ({settings.resamples:,} resamples of the same images, seed {settings.seed}) lies entirely "
            f"below minus its tolerance.")
    return _outcome(noise_aware(rows, differences), source, settings, [note])
