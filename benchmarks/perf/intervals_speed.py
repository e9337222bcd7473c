"""How long intervals and paired tests take for a whole leaderboard, from its sidecars (no model).

For a results folder (default: reports/, the zoo on --suite all: 5 models x 11 benchmarks) this
times, as the median over --repeats, what `silc-eval report --baseline M` adds to a report: reading
every sidecar, building each task's unit statistics, the bootstrap intervals of every main metric
(--resamples, seed 0) and the paired test of every other model against the baseline, Holm-corrected.
Imports (torch comes with the task registry) are outside the timing; the first run is a warm-up.

Nothing here is a test; it prints the times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from silc_eval.report.intervals import IntervalSettings, bootstrap_folder  # noqa: E402
from silc_eval.report.records import load_result_records  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=Path(__file__).resolve().parents[2] / "reports",
                        help="a results folder with sidecars (default: reports/, the zoo on --suite all)")
    parser.add_argument("--baseline", default=None, help="the baseline model (default: the first model)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    records = load_result_records(args.results)
    models = list(dict.fromkeys(r["model"]["name"] for r in records))
    baseline = args.baseline or models[0]
    settings = IntervalSettings(resamples=args.resamples)
    bootstrap_folder(args.results, records, settings, baseline)  # warm-up (file cache, lazy imports)
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = bootstrap_folder(args.results, records, settings, baseline)
        times.append(time.perf_counter() - started)
    benchmarks = {r["benchmark"]["name"] for r in records}
    print(f"{args.results}: {len(models)} models x {len(benchmarks)} benchmarks ({len(records)} records), "
          f"baseline {baseline}, {args.resamples} resamples")
    print(f"intervals: {len(result.intervals)}, paired tests: {len(result.differences)} "
          f"({sum(d.test.startswith('McNemar') for d in result.differences.values())} McNemar), "
          f"records without a sidecar: {len(result.without_sidecar)}")
    print(f"wall time: median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}) "
          f"over {args.repeats} repeats")


if __name__ == "__main__":
    main()
