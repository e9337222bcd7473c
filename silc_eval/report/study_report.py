"""The report of a training study (train/study.py): per recipe, budget and benchmark, the mean over seeds and
its 95% interval over seeds and images; paired differences between recipes; score against training FLOPs; and,
when the study file declares one, the selection its rule makes (select_recipe).

Reads only OUTPUT/study.json (which model is which recipe, budget and seed), the records and their
sidecars under OUTPUT/results, and the models' cards (images seen, training FLOPs; OUTPUT/models/<name>/card.yaml,
so a published copy holding only the cards reports the same). For one
benchmark, a recipe's seeds are stacked into one UnitStatistics (core/resampling.stack_seeds): its
value is the mean of the seeds' scores and every bootstrap replicate draws the images and the seeds
with replacement, so the interval covers both. A trained-head task's own seeds are stacked with the
models' (each model x head seed counts as one seed). Differences between two recipes at one budget
are paired over the same images (same unit-count matrix) and the same seed draws.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from silc_eval.core import resampling as rs
from silc_eval.core.errors import UserError
from silc_eval.core.io import atomic_write_bytes, atomic_write_text
from silc_eval.models.zoo import CARD_FILE
from silc_eval.report.compute import model_compute
from silc_eval.report.intervals import record_statistics
from silc_eval.report.records import load_result_records

REPORT_FILE, TABLE_FILE, PLOT_FILE = "report.md", "study.csv", "score_vs_flops.png"


def read_plan(output: Path) -> dict[str, Any]:
    """Return OUTPUT/study.json; a missing one is a UserError saying what writes it."""
    path = Path(output) / "study.json"
    if not path.is_file():
        raise UserError(f"{path} not found; expected a study folder written by 'silc-eval study'")
    return json.loads(path.read_text())


def summarize(output: Path, resamples: int = rs.DEFAULT_RESAMPLES, seed: int = rs.DEFAULT_SEED,
              level: float = rs.DEFAULT_LEVEL) -> list[dict[str, Any]]:
    """Return one row per (label, budget, benchmark) with records: main metric mean over seeds, interval,
    the seeds found, mean images seen and training FLOPs; in plan order."""
    output = Path(output)
    plan = read_plan(output)
    runs = {r["model"]: r for r in plan["runs"]}
    records = [r for r in load_result_records(output / "results", warn=lambda _: None) if r["model"]["name"] in runs]
    grouped: dict[tuple[str, int, str], list[dict]] = defaultdict(list)
    for record in records:
        run = runs[record["model"]["name"]]
        grouped[(run["label"], run["budget_images"], record["benchmark"]["name"])].append(record)
    rows = []
    order = list(dict.fromkeys((r["label"], r["budget_images"]) for r in plan["runs"]))
    for label, budget in order:
        for benchmark in plan["benchmarks"]:
            found = sorted(grouped.get((label, budget, benchmark), []), key=lambda r: runs[r["model"]["name"]]["seed"])
            if not found:
                continue
            metric = found[0]["benchmark"]["main_metric"]
            stats = [record_statistics(output / "results", r) for r in found]
            compute = [model_compute(r, lambda _: None, output / "models" / r["model"]["name"] / CARD_FILE)
                       for r in found]
            if any(s is None for s in stats):
                values = [r["metrics"].get(metric) for r in found]
                interval = rs.Interval(float(np.nanmean([math.nan if v is None else v for v in values])),
                                       math.nan, math.nan, level, 0, seed)
            else:
                interval = rs.bootstrap_interval(rs.stack_seeds(stats), metric, resamples, level, seed)
            rows.append({"label": label, "budget_images": budget, "benchmark": benchmark,
                         "group": found[0]["benchmark"].get("group", ""), "metric": metric,
                         "mean": interval.value, "low": interval.low, "high": interval.high,
                         "seeds": [runs[r["model"]["name"]]["seed"] for r in found],
                         "seed_values": [r["metrics"].get(metric) for r in found],
                         "images_seen": float(np.nanmean([c["images_seen"] for c in compute])),
                         "training_flops": float(np.nanmean([c["training_flops"] for c in compute])),
                         "_stats": stats})
    return rows


FLOPS_MATCH = 1.25  # two runs count as equal-FLOPs when their training FLOPs differ by at most this factor


def matched_budgets(rows: list[dict[str, Any]], a: str, b: str, axis: str) -> list[tuple[int, int]]:
    """Return the (a's budget, b's budget) pairs compared on an axis: 'images' pairs equal budgets; 'flops' pairs each
    budget of a with b's budget of nearest training FLOPs, kept when they differ by at most FLOPS_MATCH (and not
    already an equal-images pair)."""
    flops = {(r["label"], r["budget_images"]): r["training_flops"] for r in rows}
    mine = sorted({budget for label, budget in flops if label == a})
    theirs = sorted({budget for label, budget in flops if label == b})
    if axis == "images":
        return [(budget, budget) for budget in mine if budget in theirs]
    pairs = []
    for budget in mine:
        if not theirs:
            break
        nearest = min(theirs, key=lambda other: abs(math.log(flops[(b, other)] / flops[(a, budget)])))
        ratio = flops[(a, budget)] / flops[(b, nearest)]
        if nearest != budget and 1 / FLOPS_MATCH <= ratio <= FLOPS_MATCH:
            pairs.append((budget, nearest))
    return pairs


def paired_replicates(left: dict[str, Any], right: dict[str, Any], resamples: int, seed: int) -> np.ndarray | None:
    """Return the (B,) bootstrap replicates of left's seed mean minus right's on one benchmark, paired over the same
    images and seed draws; None when either side lacks unit statistics or their images differ."""
    if any(s is None for s in left["_stats"] + right["_stats"]):
        return None
    sides = [rs.stack_seeds(left["_stats"]), rs.stack_seeds(right["_stats"])]
    if sides[0].n_units != sides[1].n_units:
        return None
    metric = left["metric"]
    draws = rs.replicates(sides, [[metric], [metric]], resamples, seed)
    return draws[0][metric] - draws[1][metric]


def paired_differences(rows: list[dict[str, Any]], pairs: list[tuple[str, str]], resamples: int, seed: int,
                       level: float, axis: str = "images") -> list[dict[str, Any]]:
    """Return per (a, b) pair, matched budgets (matched_budgets on axis) and benchmark the difference a - b of the
    seed means, its paired interval and bootstrap p-value, Holm-corrected per pair and budget across benchmarks."""
    index = {(r["label"], r["budget_images"], r["benchmark"]): r for r in rows}
    out = []
    for a, b in pairs:
        for budget_a, budget_b in matched_budgets(rows, a, b, axis):
            family = []
            for benchmark in dict.fromkeys(r["benchmark"] for r in rows):
                left, right = index.get((a, budget_a, benchmark)), index.get((b, budget_b, benchmark))
                if left is None or right is None:
                    continue
                deltas = paired_replicates(left, right, resamples, seed)
                if deltas is None:
                    continue
                metric, observed = left["metric"], left["mean"] - right["mean"]
                test = rs.paired_from_replicates(observed, deltas, level)
                family.append({"a": a, "b": b, "budget_images": budget_a, "budget_images_b": budget_b,
                               "flops_ratio": left["training_flops"] / right["training_flops"],
                               "benchmark": benchmark, "metric": metric, "delta": observed, "low": test.low,
                               "high": test.high, "p_value": test.p_value})
            for row, adjusted in zip(family, rs.holm([r["p_value"] for r in family])):
                row["p_holm"] = adjusted
                row["significant"] = adjusted < 1 - level
            out += family
    return out


def mean_score_difference(rows: list[dict[str, Any]], a: str, b: str, budget: int, benchmarks: list[str],
                          resamples: int, seed: int, level: float) -> dict[str, Any] | None:
    """Return a − b of the mean over benchmarks of the main metric at one budget (equal images seen), with its paired
    interval and p-value: each bootstrap replicate averages the benchmarks' paired replicate differences (every
    benchmark's images and seeds drawn as paired_replicates draws them). None when a benchmark has no paired
    replicates."""
    index = {(r["label"], r["budget_images"], r["benchmark"]): r for r in rows}
    observed, deltas = [], []
    for benchmark in benchmarks:
        left, right = index[(a, budget, benchmark)], index[(b, budget, benchmark)]
        draws = paired_replicates(left, right, resamples, seed)
        if draws is None:
            return None
        observed.append(left["mean"] - right["mean"])
        deltas.append(draws)
    delta = float(np.mean(observed))
    test = rs.paired_from_replicates(delta, np.mean(np.vstack(deltas), axis=0), level)
    return {"delta": delta, "low": test.low, "high": test.high, "p_value": test.p_value}


def select_recipe(rows: list[dict[str, Any]], rule: dict[str, Any], resamples: int, seed: int,
                  level: float) -> list[dict[str, Any]]:
    """Return per budget the study's declared selection (study file `select: {baseline, exclude}`): every candidate
    (a label neither the baseline nor excluded) ranked by its mean over the benchmarks every label has, the best
    one's difference to the baseline (mean_score_difference), and `selected`: the best candidate when that
    difference's interval lies above 0, otherwise the baseline (a candidate within the noise does not replace it)."""
    baseline, excluded = rule["baseline"], set(rule.get("exclude", []))
    out = []
    for budget in sorted({r["budget_images"] for r in rows}):
        at_budget = [r for r in rows if r["budget_images"] == budget]
        labels = list(dict.fromkeys(r["label"] for r in at_budget))
        if baseline not in labels:
            continue
        shared = [b for b in dict.fromkeys(r["benchmark"] for r in at_budget)
                  if all(any(r["label"] == label and r["benchmark"] == b for r in at_budget) for label in labels)]
        means = {label: float(np.mean([r["mean"] for r in at_budget
                                       if r["label"] == label and r["benchmark"] in shared])) for label in labels}
        candidates = sorted((label for label in labels if label != baseline and label not in excluded),
                            key=lambda label: -means[label])
        if not candidates or not shared:
            continue
        best = candidates[0]
        difference = mean_score_difference(rows, best, baseline, budget, shared, resamples, seed, level)
        wins = difference is not None and difference["low"] > 0
        out.append({"budget_images": budget, "baseline": baseline, "benchmarks": shared, "means": means,
                    "ranking": candidates, "best": best, "difference": difference,
                    "selected": best if wins else baseline})
    return out


def render_selection(selections: list[dict[str, Any]], level: float) -> list[str]:
    """Return the Markdown lines of the declared selection: each label's mean over the shared main metrics, the best
    candidate's paired difference to the baseline and the verdict."""
    lines = []
    for sel in selections:
        lines += ["", f"## Selection at {sel['budget_images']:,} images (the rule declared in the study file)", "",
                  f"Mean over the main metrics of {len(sel['benchmarks'])} benchmarks (%), every candidate ranked; the "
                  f"best replaces the baseline ({sel['baseline']}) only when its paired {100 * level:g}% interval of "
                  f"the difference in that mean lies above 0.", "", "| recipe | mean | role |", "|---|---:|---|"]
        for label, mean in sorted(sel["means"].items(), key=lambda item: -item[1]):
            role = "baseline" if label == sel["baseline"] else ("best candidate" if label == sel["best"] else
                                                               "candidate" if label in sel["ranking"] else "excluded")
            lines.append(f"| {label} | {100 * mean:.2f} | {role} |")
        d = sel["difference"]
        shown = "no paired replicates" if d is None else \
            f"{100 * d['delta']:+.2f} pp [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}], p {d['p_value']:.3g}"
        verdict = f"**Selected: {sel['best']}**" if sel["selected"] == sel["best"] else \
            f"**Kept: {sel['baseline']}** (no candidate is above it beyond the noise)"
        lines += ["", f"{sel['best']} − {sel['baseline']}: {shown}. {verdict}."]
    return lines


def _pp(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def render_markdown(plan: dict[str, Any], rows: list[dict[str, Any]], differences: list[dict[str, Any]],
                    resamples: int, level: float, flops_differences: list[dict[str, Any]] = (),
                    selections: list[dict[str, Any]] = ()) -> str:
    """Return the study report as Markdown: the declared selection (if any), one table per benchmark (recipes x
    budgets), compute, and the paired differences at equal images seen and at matched training FLOPs."""
    budgets = sorted({r["budget_images"] for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    index = {(r["label"], r["budget_images"], r["benchmark"]): r for r in rows}
    lines = [f"# Study: {plan['name']}", ""]
    if plan.get("description"):
        lines += [plan["description"], ""]
    if plan.get("synthscenes_seed") is not None:
        lines += [f"**Validation world:** every benchmark was scored on the SynthScenes world of seed "
                  f"{plan['synthscenes_seed']} (the same classes and vocabulary, other scenes), not on the benchmarks' "
                  f"own world (seed 0): these numbers may choose a recipe without touching its test data.", ""]
    lines += [f"Each cell: the mean over seeds of the main metric (%), and its {100 * level:g}% percentile-bootstrap "
              f"interval over images and seeds ({resamples:,} resamples; a trained head's own seeds count as seeds "
              f"too), at equal images seen. Seeds per cell in brackets when fewer than planned.", ""]
    planned = {(r["label"], r["budget_images"]): 0 for r in plan["runs"]}
    for run in plan["runs"]:
        planned[(run["label"], run["budget_images"])] += 1
    if any(len(r["seeds"]) < 2 for r in rows):
        lines += ["**Incomplete:** a cell with one trained seed has an interval over images (and a trained head's "
                  "seeds) only, not over training seeds: its differences, starred or not, may not survive the "
                  "other seeds.", ""]
    if selections:
        lines += render_selection(selections, level)[1:] + [""]
    lines += ["## Compute", "", "| recipe | " + " | ".join(f"{b:,} images: training FLOPs" for b in budgets) + " |",
              "|---|" + "---:|" * len(budgets)]
    for label in labels:
        cells = []
        for budget in budgets:
            found = [r for r in rows if r["label"] == label and r["budget_images"] == budget]
            cells.append(f"{found[0]['training_flops']:.3g}" if found else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for benchmark in dict.fromkeys(r["benchmark"] for r in rows):
        metric = next(r["metric"] for r in rows if r["benchmark"] == benchmark)
        lines += ["", f"## {benchmark} ({metric})", "", "| recipe | " + " | ".join(f"{b:,} images" for b in budgets)
                  + " |", "|---|" + "---:|" * len(budgets)]
        for label in labels:
            cells = []
            for budget in budgets:
                row = index.get((label, budget, benchmark))
                if row is None:
                    cells.append("—")
                    continue
                short = f" [{len(row['seeds'])} of {planned[(label, budget)]} seeds]" \
                    if len(row["seeds"]) < planned[(label, budget)] else ""
                cells.append(f"{_pp(row['mean'])} [{_pp(row['low'])}, {_pp(row['high'])}]{short}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if differences:
        lines += ["", "## Paired differences at equal images seen", "",
                  f"a − b in percentage points with its paired {100 * level:g}% interval (same images, same seed "
                  f"draws); p from the paired bootstrap, Holm-corrected across the benchmarks of each pair and budget; "
                  f"* significant at {1 - level:.2g}.", "",
                  "| a − b | budget | benchmark | delta | interval | Holm p |", "|---|---:|---|---:|---:|---:|"]
        for d in differences:
            star = "*" if d["significant"] else ""
            lines.append(f"| {d['a']} − {d['b']} | {d['budget_images']:,} | {d['benchmark']} | "
                         f"{100 * d['delta']:+.2f}{star} | [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] | "
                         f"{d['p_holm']:.3g} |")
    lines += ["", "## Paired differences at matched training FLOPs", "",
              f"Each budget of a against the budget of b whose training FLOPs are nearest, when they differ by at most "
              f"{FLOPS_MATCH:g}x (a/b is the FLOPs ratio); same intervals and Holm correction as above.", ""]
    if flops_differences:
        lines += ["| a − b | a's images | b's images | FLOPs a/b | benchmark | delta | interval | Holm p |",
                  "|---|---:|---:|---:|---|---:|---:|---:|"]
        for d in flops_differences:
            star = "*" if d["significant"] else ""
            lines.append(f"| {d['a']} − {d['b']} | {d['budget_images']:,} | {d['budget_images_b']:,} | "
                         f"{d['flops_ratio']:.2f} | {d['benchmark']} | {100 * d['delta']:+.2f}{star} | "
                         f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] | {d['p_holm']:.3g} |")
    else:
        lines.append("No compared pair has budgets within that factor of each other's FLOPs: give the cheaper recipe "
                     "a larger budget (a recipe's own `budgets` in the study file).")
    lines += ["", f"![score against training FLOPs]({PLOT_FILE})", ""]
    return "\n".join(lines)


def render_csv(rows: list[dict[str, Any]]) -> str:
    """Return the long table: label, budget, benchmark, metric, mean, interval, seeds, compute."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", "budget_images", "benchmark", "group", "metric", "mean", "ci_low", "ci_high", "seeds",
                     "seed_values", "images_seen", "training_flops"])
    for r in rows:
        writer.writerow([r["label"], r["budget_images"], r["benchmark"], r["group"], r["metric"],
                         f"{r['mean']:.6f}", f"{r['low']:.6f}", f"{r['high']:.6f}", " ".join(map(str, r["seeds"])),
                         " ".join("nan" if v is None else f"{v:.6f}" for v in r["seed_values"]),
                         f"{r['images_seen']:.0f}", f"{r['training_flops']:.6g}"])
    return buffer.getvalue()


def render_plot(rows: list[dict[str, Any]]) -> bytes:
    """Return a PNG: one panel per benchmark, each recipe's mean (with its interval) against training FLOPs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benchmarks = list(dict.fromkeys(r["benchmark"] for r in rows))
    columns = min(4, len(benchmarks))
    lines = math.ceil(len(benchmarks) / columns)
    figure = Figure(figsize=(4 * columns, 3 * lines))
    FigureCanvasAgg(figure)
    for position, benchmark in enumerate(benchmarks, 1):
        axis = figure.add_subplot(lines, columns, position)
        for label in dict.fromkeys(r["label"] for r in rows):
            points = sorted((r["training_flops"], r["mean"], r["low"], r["high"]) for r in rows
                            if r["benchmark"] == benchmark and r["label"] == label)
            if not points:
                continue
            x, y, low, high = (np.array(v, dtype=float) for v in zip(*points))
            error = np.vstack([np.nan_to_num(y - low), np.nan_to_num(high - y)]) * 100
            axis.errorbar(x, 100 * y, yerr=error, marker="o", capsize=3, label=label)
        axis.set_xscale("log")
        axis.set_title(benchmark, fontsize=8)
        axis.set_xlabel("training FLOPs", fontsize=7)
        axis.tick_params(labelsize=6)
    figure.axes[0].legend(fontsize=6)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_study_report(output: Path, resamples: int = rs.DEFAULT_RESAMPLES, seed: int = rs.DEFAULT_SEED,
                       level: float = rs.DEFAULT_LEVEL) -> Path:
    """Write report.md, study.csv and score_vs_flops.png into the study folder; return report.md's path."""
    output = Path(output)
    plan = read_plan(output)
    rows = summarize(output, resamples, seed, level)
    if not rows:
        raise UserError(f"no records of the study's models under {output / 'results'}; run 'silc-eval study' first")
    pairs = [tuple(p) for p in plan.get("compare", [])]
    differences = paired_differences(rows, pairs, resamples, seed, level)
    flops_differences = paired_differences(rows, pairs, resamples, seed, level, axis="flops")
    atomic_write_text(output / TABLE_FILE, render_csv(rows))
    atomic_write_bytes(output / PLOT_FILE, render_plot(rows))
    selections = select_recipe(rows, plan["select"], resamples, seed, level) if plan.get("select") else []
    atomic_write_text(output / REPORT_FILE, render_markdown(plan, rows, differences, resamples, level,
                                                            flops_differences, selections))
    return output / REPORT_FILE
