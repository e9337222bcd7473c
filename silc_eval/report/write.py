"""Write the report files of a run folder: results.csv, leaderboard.csv and leaderboard.md."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from silc_eval.io import atomic_write_text
from silc_eval.report.tables import leaderboard_table, main_metric_labels, results_table, to_markdown
from silc_eval.results import read_records


def write_reports(output: Path, model_order: Sequence[str] | None = None,
                  benchmark_order: Sequence[str] | None = None) -> dict[str, Path]:
    """Build every table from the records under output and write them atomically; returns {kind: path}."""
    output = Path(output)
    records = read_records(output)
    leaderboard = leaderboard_table(records, model_order, benchmark_order)
    paths = {"results_csv": output / "results.csv", "leaderboard_csv": output / "leaderboard.csv",
             "leaderboard_md": output / "leaderboard.md"}
    atomic_write_text(paths["results_csv"], results_table(records).to_csv(index=False, float_format="%.6f"))
    atomic_write_text(paths["leaderboard_csv"], leaderboard.to_csv(float_format="%.4f"))
    title = "# silc-eval leaderboard\n\nMain metric of each benchmark, in %; `mean` is their average.\n\n"
    atomic_write_text(paths["leaderboard_md"], title + to_markdown(leaderboard, main_metric_labels(records)))
    return paths
