"""The evaluate flow: suite x models -> datasets -> tasks -> records -> reports."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from silc_eval import __version__
from silc_eval.core import distributed
from silc_eval.data.build import build_dataset, dataset_root, expected_paths, missing_paths, train_paths
from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import file_sha256
from silc_eval.models import load_model, parse_model_spec
from silc_eval.models.loading import find_weights_file
from silc_eval.models.zoo import list_zoo
from silc_eval.registry import Benchmark
from silc_eval.report.write import write_reports
from silc_eval.report.records import read_one
from silc_eval.evaluate.records import make_record, record_path, write_record
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
    force: bool = False  # recompute records whose inputs are unchanged (see plan_resume)


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
    """Print a progress line to stderr (rank 0 only under torchrun); returns nothing."""
    if distributed.is_main():
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
    with distributed.main_first():  # under torchrun rank 0 generates SynthScenes, the others then find it
        roots = {b.name: dataset_root(b.dataset, config.data_root, config.synthscenes_root) for b in benchmarks}
    plan = resume_plan(config, model_specs, benchmarks, roots)
    records, model_names = [], []
    for spec in model_specs:
        records += plan.kept_records(spec)
        todo = plan.pending(spec, benchmarks)
        if not todo:
            model_names.append(parse_model_spec(spec).name)
            continue
        model = load_model(spec, device=config.device)
        model_names.append(model.name)
        datasets = {}
        for benchmark in todo:
            key = json.dumps(benchmark.dataset, sort_keys=True)
            if key not in datasets:
                datasets[key] = build_dataset(benchmark.dataset, roots[benchmark.name], model.preprocess)
            record = evaluate_one(model, benchmark, datasets[key], config.device, config.progress)
            if distributed.is_main():
                write_record(config.output, record)
            records.append(record)
            main = record["metrics"][benchmark.main_metric]
            shown = "undefined" if main is None else f"{100 * main:.2f}"
            log(f"{model.name:>28s} | {benchmark.name:<28s} {benchmark.main_metric} = {shown}")
    if distributed.is_main():
        write_reports(config.output, model_order=model_names, benchmark_order=[b.name for b in benchmarks])
    return records


# ----------------------------------------------------------------------------- resuming a run
# A rerun into the same output folder keeps every record whose inputs are unchanged: the model's
# weights (sha256), the dataset (fingerprint), the protocol parameters, the benchmark's definition
# and the silc-eval version. Records are written atomically, so a killed run leaves whole records
# of what it finished and nothing of the rest; the rerun computes only the rest.

RESUME_INPUTS = "model sha256, dataset fingerprint, protocol, silc-eval version"


@dataclass
class ResumePlan:
    """The records a run keeps (by model spec, then benchmark name) and the ones it recomputes, with why."""

    kept: dict[str, dict[str, dict]] = field(default_factory=dict)
    stale: list[tuple[str, str, str]] = field(default_factory=list)  # (model name, benchmark name, reason)

    def kept_records(self, spec: str) -> list[dict]:
        """Return the records kept for a model spec."""
        return list(self.kept.get(spec, {}).values())

    def pending(self, spec: str, benchmarks: Sequence[Benchmark]) -> list[Benchmark]:
        """Return the benchmarks a model spec still has to be evaluated on, in order."""
        kept = self.kept.get(spec, {})
        return [b for b in benchmarks if b.name not in kept]


def weights_sha256(spec: str) -> str:
    """Return the sha256 of a model spec's weights file (what load_model records), without loading it."""
    parsed = parse_model_spec(spec)
    return file_sha256(parsed.path if parsed.kind == "checkpoint" else find_weights_file(parsed.path))


def as_json(value):
    """Return value as it reads back from a JSON record (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, sort_keys=True))


def changed_inputs(record: dict, sha256: str, benchmark: Benchmark) -> list[str]:
    """Return what differs between a record and this run, leaving out the dataset fingerprint ([] if nothing)."""
    changes = []
    if record["model"]["sha256"] != sha256:
        changes.append("model weights changed (sha256)")
    found = record["provenance"].get("silc_eval_version")
    if found != __version__:
        changes.append(f"silc-eval version {found} -> {__version__}")
    old, new = record["protocol"], as_json(benchmark.protocol())
    differing = sorted(k for k in set(old) | set(new) if old.get(k, "(unset)") != new.get(k, "(unset)"))
    if differing:
        shown = ", ".join(f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in differing[:3])
        changes.append(f"protocol changed ({shown}{', ...' if len(differing) > 3 else ''})")
    if record["dataset"].get("declaration") != as_json(benchmark.dataset):
        changes.append("dataset declaration changed (e.g. its training split)")
    definition = {k: record["benchmark"].get(k) for k in ("task", "group", "main_metric")}
    if definition != {"task": benchmark.task, "group": benchmark.group, "main_metric": benchmark.main_metric}:
        changes.append("benchmark definition changed (task, group or main metric)")
    return changes


def existing_record(path: Path, model_name: str, benchmark: Benchmark) -> tuple[dict | None, str | None]:
    """Return (record, None) for a usable earlier record at path, (None, why not) for an unusable one,
    and (None, None) when there is none."""
    if not path.exists():
        return None, None
    record, problem = read_one(path)
    if problem:
        return None, f"unusable record ({problem})"
    if (record["model"]["name"], record["benchmark"]["name"]) != (model_name, benchmark.name):
        return None, (f"foreign record (of {record['model']['name']} on {record['benchmark']['name']})")
    sections_ok = all(isinstance(record.get(k), dict) for k in ("dataset", "protocol", "provenance"))
    if not sections_ok or not record["dataset"].get("fingerprint") or benchmark.main_metric not in record["metrics"]:
        return None, "malformed record (no dataset fingerprint, protocol, provenance or main metric)"
    return record, None


def plan_resume(output: Path, model_specs: Sequence[str], benchmarks: Sequence[Benchmark],
                roots: dict[str, Path]) -> ResumePlan:
    """Return which records under output a run of model_specs x benchmarks can keep.

    Model weights are hashed and datasets fingerprinted only where an earlier record exists; a
    dataset is built without a transform for its fingerprint (no image is read).
    """
    plan, fingerprints = ResumePlan(), {}
    for spec in model_specs:
        name, sha256 = parse_model_spec(spec).name, None
        for benchmark in benchmarks:
            record, problem = existing_record(record_path(output, name, benchmark.name), name, benchmark)
            if record is None:
                if problem:
                    plan.stale.append((name, benchmark.name, problem))
                continue
            sha256 = sha256 or weights_sha256(spec)
            changes = changed_inputs(record, sha256, benchmark)
            if not changes:
                key = json.dumps(benchmark.dataset, sort_keys=True)
                if key not in fingerprints:
                    fingerprints[key] = build_dataset(benchmark.dataset, roots[benchmark.name], None).fingerprint
                if record["dataset"]["fingerprint"] != fingerprints[key]:
                    changes.append("dataset changed (fingerprint)")
            if changes:
                plan.stale.append((name, benchmark.name, "; ".join(changes)))
            else:
                plan.kept.setdefault(spec, {})[benchmark.name] = record
    return plan


def resume_block(plan: ResumePlan, output: Path, total: int) -> str | None:
    """Return the stderr block naming the records kept and the earlier ones recomputed (None if neither)."""
    if not plan.kept and not plan.stale:
        return None
    kept = sum(len(by_benchmark) for by_benchmark in plan.kept.values())
    recompute = f"; recomputing {len(plan.stale)} earlier records that are stale or unusable" if plan.stale else ""
    lines = [f"silc-eval: resuming in {output}: keeping {kept} of {total} records whose inputs are unchanged "
             f"({RESUME_INPUTS}; --force recomputes them){recompute}:"]
    for spec, by_benchmark in plan.kept.items():
        lines.append(f"  kept       {parse_model_spec(spec).name}: {', '.join(by_benchmark)}")
    for model, benchmark, reason in plan.stale:
        lines.append(f"  recompute  {model} / {benchmark}: {reason}")
    return "\n".join(lines)


def resume_plan(config: RunConfig, model_specs: Sequence[str], benchmarks: Sequence[Benchmark],
                roots: dict[str, Path]) -> ResumePlan:
    """Return the run's ResumePlan (empty with --force), made on rank 0 and shared, after logging its block."""
    if config.force:
        return ResumePlan()
    plan = plan_resume(config.output, model_specs, benchmarks, roots) if distributed.is_main() else None
    plan = distributed.broadcast_object(plan)
    block = resume_block(plan, config.output, len(model_specs) * len(benchmarks))
    if block and distributed.is_main():
        log(block)
    return plan
