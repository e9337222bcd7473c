"""The evaluate flow: suite x models -> datasets -> tasks -> records -> reports."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from silc_eval.data.build import build_dataset, dataset_root, expected_paths, missing_paths, train_paths
from silc_eval.errors import UserError
from silc_eval.models import load_model, parse_model_spec
from silc_eval.models.zoo import list_zoo
from silc_eval.registry import Benchmark
from silc_eval.report.write import write_reports
from silc_eval.results import make_record, write_record
from silc_eval.tasks import TASKS


@dataclass
class RunConfig:
    """What `silc-eval run` was asked to do."""

    benchmarks: list[Benchmark]
    models: list[str] = field(default_factory=list)
    output: Path = Path("runs/latest")
    data_root: Path | None = None
    synthscenes_root: Path | None = None
    device: str = "cpu"
    progress: bool = True


def check_device(device: str) -> None:
    """Raise UserError unless device is 'cpu' or an available CUDA device."""
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} asked for, but no CUDA device is available; use --device cpu")
        return
    raise UserError(f"unknown device '{device}'; expected cpu or cuda[:N]")


def default_models() -> list[str]:
    """Return the names of every zoo model, in name order; an empty zoo is a UserError."""
    names = [entry.name for entry in list_zoo()]
    if not names:
        raise UserError("no --model given and the model zoo is empty; expected model_zoo/<name>/card.yaml")
    return names


def log(message: str) -> None:
    """Print a progress line to stderr."""
    print(message, file=sys.stderr, flush=True)


def evaluate_one(model, benchmark: Benchmark, dataset, device: str, progress: bool) -> dict:
    """Return the record of one model on one benchmark (the task does the work)."""
    protocol = benchmark.protocol()
    started = time.perf_counter()
    metrics = TASKS[benchmark.task].evaluate(model, dataset, protocol, progress=progress)
    if benchmark.main_metric not in metrics:
        raise UserError(f"{benchmark.file}: main_metric '{benchmark.main_metric}' is not produced by task "
                        f"{benchmark.task}; it produces {', '.join(metrics)}")
    return make_record(model, benchmark, dataset, protocol, metrics, time.perf_counter() - started, device)


def missing_data(benchmark: Benchmark, data_root: Path | None) -> list[str]:
    """Return the paths a real-data benchmark looked for and did not find ([] when its data is present).

    Without a data root every expected path is missing; they are shown as <data-root>/PATH.
    SynthScenes benchmarks are generated on demand, so they never miss data.
    """
    if benchmark.dataset["source"] == "synthscenes":
        return []
    if data_root is None:
        paths = expected_paths(benchmark.dataset) + train_paths(benchmark.dataset)
        return [f"<data-root>/{p}" for p in dict.fromkeys(paths)]
    return [str(p) for p in missing_paths(benchmark.dataset, data_root, include_train=True)]


def skip_block(suite: str, skipped: list[tuple[Benchmark, list[str]]], total: int, data_root: Path | None) -> str:
    """Return the stderr block naming each skipped benchmark of a suite and the paths it looked for."""
    where = f"under {data_root}" if data_root else "(no --data-root given)"
    lines = [f"silc-eval: suite {suite}: skipping {len(skipped)} of {total} benchmarks, their data is not found "
             f"{where}:"]
    width = max(len(b.name) for b, _ in skipped)
    for benchmark, paths in skipped:
        for i, path in enumerate(paths):
            lines.append(f"  {benchmark.name if i == 0 else '':<{width}s}  missing {path}")
    return "\n".join(lines)


def runnable_benchmarks(benchmarks: list[Benchmark], data_root: Path | None) -> list[Benchmark]:
    """Return the benchmarks whose data is present, after printing which suite benchmarks are skipped.

    A benchmark named explicitly (not from a suite) is always kept: building its dataset then fails
    with a one-line error. A suite with nothing runnable is a UserError listing what it looked for.
    """
    kept, skipped = [], []
    for benchmark in benchmarks:
        missing = missing_data(benchmark, data_root) if benchmark.suite else []
        if missing:
            skipped.append((benchmark, missing))
        else:
            kept.append(benchmark)
    if skipped and not kept:
        suite = skipped[0][0].suite
        looked = "; ".join(f"{b.name}: {', '.join(paths)}" for b, paths in skipped)
        hint = "pass --data-root DIR holding" if data_root is None else f"found none under {data_root}; expected"
        raise UserError(f"suite {suite} has no benchmark whose data is present ({hint} at least one of: {looked})")
    if skipped:
        log(skip_block(skipped[0][0].suite, skipped, len(benchmarks), data_root))
    return kept


def run(config: RunConfig) -> list[dict]:
    """Evaluate every model on every benchmark, write one record each and the reports; returns the records."""
    check_device(config.device)
    model_specs = config.models or default_models()
    for spec in model_specs:
        parse_model_spec(spec)  # fail on a bad name before any data is generated or read
    benchmarks = runnable_benchmarks(config.benchmarks, config.data_root)
    roots = {b.name: dataset_root(b.dataset, config.data_root, config.synthscenes_root) for b in benchmarks}
    records, model_names = [], []
    for spec in model_specs:
        model = load_model(spec, device=config.device)
        model_names.append(model.name)
        datasets = {}
        for benchmark in benchmarks:
            key = json.dumps(benchmark.dataset, sort_keys=True)
            if key not in datasets:
                datasets[key] = build_dataset(benchmark.dataset, roots[benchmark.name], model.preprocess)
            record = evaluate_one(model, benchmark, datasets[key], config.device, config.progress)
            write_record(config.output, record)
            records.append(record)
            main = record["metrics"][benchmark.main_metric]
            log(f"{model.name:>28s} | {benchmark.name:<28s} {benchmark.main_metric} = {100 * main:.2f}")
    write_reports(config.output, model_order=model_names, benchmark_order=[b.name for b in benchmarks])
    return records
