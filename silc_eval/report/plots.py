"""Report figures as PNG bytes (matplotlib, Agg, no global pyplot state)."""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from silc_eval.report.build import Report

MARKERS = "osD^vP*Xph"


def png_bytes(figure: Figure) -> bytes:
    """Return the figure rendered as PNG (96 dpi, no timestamp metadata)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def group_bar_chart(report: Report, group: str) -> bytes:
    """Return a bar chart of one group: a cluster per benchmark (and the group mean), a bar per own model, with
    error bars from the benchmarks' intervals where the report has them."""
    benchmarks = report.groups[group]
    columns = benchmarks + ([group] if len(benchmarks) > 1 else [])
    labels = benchmarks + (["mean"] if len(benchmarks) > 1 else [])
    wide, models = report.wide(), report.own_models
    width = 0.8 / max(len(models), 1)
    figure = Figure(figsize=(max(4.0, 1.2 + 0.9 * len(columns) * max(1, len(models)) * 0.35), 3.4))
    axes = figure.add_subplot()
    with_errors = False
    for i, model in enumerate(models):
        values = [wide.at[model, c] for c in columns]
        positions = [k + (i - (len(models) - 1) / 2) * width for k in range(len(columns))]
        errors = error_bars(report, model, columns, values)
        with_errors = with_errors or errors is not None
        axes.bar(positions, [0.0 if math.isnan(v) else v for v in values], width, label=model,
                 color=f"C{i % 10}", edgecolor="none", yerr=errors,
                 error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
    axes.set_xticks(range(len(columns)), labels, rotation=20 if len(columns) > 2 else 0, ha="right"
                    if len(columns) > 2 else "center", fontsize=8)
    axes.set_ylabel("score (%)")
    level = f"; error bars: {100 * report.bootstrap.settings.level:g}% intervals" if with_errors else ""
    axes.set_title(f"{group} (main metric of each benchmark{level})", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return png_bytes(figure)


def error_bars(report: Report, model: str, columns: list[str], values: list[float]) -> list[list[float]] | None:
    """Return the (2, columns) lower / upper error bar lengths in % of one model's bars (NaN where a column
    has no interval), or None when none has one."""
    lower, upper = [], []
    for column, value in zip(columns, values):
        interval = report.interval(model, column)
        if interval is None or math.isnan(value) or math.isnan(interval.low):
            lower.append(math.nan)
            upper.append(math.nan)
        else:
            lower.append(max(0.0, value - 100 * interval.low))
            upper.append(max(0.0, 100 * interval.high - value))
    return None if all(math.isnan(v) for v in lower) else [lower, upper]


def compute_points(report: Report) -> list[tuple[str, str, float, float]]:
    """Return (model, group, training FLOPs, group mean %) for own models with both numbers known."""
    means = report.group_means()
    points = []
    for model in report.own_models:
        flops = report.compute.at[model, "training_flops"]
        for group in report.groups:
            score = means.at[model, group]
            if not (math.isnan(flops) or math.isnan(score) or flops <= 0):
                points.append((model, group, float(flops), float(score)))
    return points


def compute_scatter(report: Report) -> bytes | None:
    """Return score versus training FLOPs (log x): one point per model per group mean; None without compute."""
    points = compute_points(report)
    if not points:
        return None
    figure = Figure(figsize=(7.0, 4.0))
    axes = figure.add_subplot()
    models = report.own_models
    for g, group in enumerate(report.groups):
        mine = [p for p in points if p[1] == group]
        if mine:
            axes.scatter([p[2] for p in mine], [p[3] for p in mine], label=group, color=f"C{g % 10}",
                         marker="o", s=36, zorder=3)
    for model, _, flops, score in points:
        axes.annotate(str(models.index(model) + 1), (flops, score), textcoords="offset points", xytext=(4, 3),
                      fontsize=7)
    axes.set_xscale("log")
    axes.set_xlabel("training FLOPs (model card)")
    axes.set_ylabel("group mean (%)")
    axes.set_title("score versus training compute (numbers: models, see the legend below)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    key = "   ".join(f"{i + 1} = {m}" for i, m in enumerate(models) if any(p[0] == m for p in points))
    figure.text(0.0, -0.02, key, fontsize=7, va="top", wrap=True)
    return png_bytes(figure)
