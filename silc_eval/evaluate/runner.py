"""The evaluate flow: suite x models -> datasets -> tasks -> records -> reports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from silc_eval.core import distributed
from silc_eval.core.errors import UserError
from silc_eval.core.io import check_writable_folder
from silc_eval.core.log import log
from silc_eval.data.formats import declared_paths, missing_paths
from silc_eval.evaluate.api import build_splits, dataset_root, evaluate_benchmark
from silc_eval.evaluate.limit import limit_splits
from silc_eval.evaluate.records import make_record, write_record
from silc_eval.evaluate.resume import ResumePlan, plan_resume, resume_block
from silc_eval.models import load_model, parse_model_spec
from silc_eval.models.loading import check_precision
from silc_eval.models.zoo import list_zoo
from silc_eval.registry import Benchmark
from silc_eval.report.write import write_reports


@dataclass
class RunConfig:
    """What `silc-eval run` was asked to do."""

    benchmarks: list[Benchmark]
    models: list[str] = field(default_factory=list)
    output: Path = Path("runs/latest")
    data_root: Path | None = None
    synthscenes_root: Path | None = None
    synthscenes_seed: int | None = None  # a validation world for tuning (the benchmarks' own is seed 0)
    device: str = "cpu"
    progress: bool = True
    force: bool = False  # recompute records whose inputs are unchanged (see plan_resume)
    limit: int | None = None  # a smoke run on the first N samples of every split (evaluate/limit.py)
    precision: str = "fp32"  # fp16: open_clip towers in half precision as OpenAI's reference code runs them


def default_models() -> list[str]:
    """Return the names of every zoo model, in name order; an empty zoo is a UserError."""
    names = [entry.name for entry in list_zoo()]
    if not names:
        raise UserError("no --model given and the model zoo is empty; expected model_zoo/<name>/card.yaml")
    return names


def missing_data(benchmark: Benchmark, data_root: Path | None) -> list[str]:
    """Return the paths a real-data benchmark looked for and did not find ([] when its data is present).

    Without a data root every expected path is missing; they are shown as <data-root>/PATH.
    SynthScenes benchmarks are generated on demand, so they never miss data.
    """
    if benchmark.dataset["source"] == "synthscenes":
        return []
    splits = benchmark.task_spec.splits
    if data_root is None:
        return [f"<data-root>/{p}" for p in declared_paths(benchmark.dataset, splits)]
    return [str(p) for p in missing_paths(benchmark.dataset, data_root, splits)]


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
    """Evaluate every model on every benchmark, write one record (and its sidecar) each and the reports;
    returns the records."""
    distributed.check_device(config.device)
    check_writable_folder(config.output, "--output")  # before any work: not a file, not read-only
    model_specs = config.models or default_models()
    for spec in model_specs:  # fail on a bad name or precision before any data is generated or read
        check_precision(config.precision, parse_model_spec(spec).kind)
    if distributed.active():
        log(f"silc-eval: sharding the run over {distributed.world_size()} processes ({distributed.backend()}, "
            f"rank 0 on {config.device}); rank 0 writes the results")
    benchmarks = runnable_benchmarks(config.benchmarks, config.data_root)
    with distributed.main_first():  # under torchrun rank 0 generates SynthScenes, the others then find it
        roots = {b.name: dataset_root(b.dataset, config.data_root, config.synthscenes_root,
                                          config.synthscenes_seed) for b in benchmarks}
    plan = resume_plan(config, model_specs, benchmarks, roots)
    if config.limit is not None:
        log(f"silc-eval: smoke run on the first {config.limit} samples of every split (--limit): its records say "
            f"so and are not comparable with full results")
    records, model_names = [], []
    for spec in model_specs:
        records += plan.kept_records(spec)
        todo = plan.pending(spec, benchmarks)
        if not todo:
            model_names.append(parse_model_spec(spec).name)
            continue
        model = load_model(spec, device=config.device, precision=config.precision)
        model_names.append(model.name)
        built: dict[tuple[str, tuple[str, ...]], dict] = {}
        for benchmark in todo:
            key = (json.dumps(benchmark.dataset, sort_keys=True), benchmark.task_spec.splits)
            if key not in built:
                built[key] = limit_splits(build_splits(benchmark, roots[benchmark.name], model.preprocess),
                                          config.limit)
            evaluation = evaluate_benchmark(model, benchmark, built[key], config.progress)
            record = make_record(model, benchmark, evaluation, config.device)
            if config.limit is not None:
                record["limit"] = config.limit
            if distributed.is_main():
                write_record(config.output, record, evaluation.outcome.samples)
            records.append(record)
            main = record["metrics"][benchmark.main_metric]
            shown = "undefined" if main is None else f"{100 * main:.2f}"
            log(f"{model.name:>28s} | {benchmark.name:<28s} {benchmark.main_metric} = {shown}")
    if distributed.is_main():
        write_reports(config.output, model_order=model_names, benchmark_order=[b.name for b in benchmarks])
    return records


def resume_plan(config: RunConfig, model_specs: Sequence[str], benchmarks: Sequence[Benchmark],
                roots: dict[str, Path]) -> ResumePlan:
    """Return the run's ResumePlan (empty with --force), made on rank 0 and shared, after logging its block."""
    if config.force:
        return ResumePlan()
    plan = plan_resume(config.output, model_specs, benchmarks, roots, config.limit, config.precision) \
        if distributed.is_main() else None
    plan = distributed.broadcast_object(plan)
    block = resume_block(plan, config.output, len(model_specs) * len(benchmarks))
    if block:
        log(block)
    return plan
