"""Resuming a run: which earlier records of an output folder are kept, and why the others are recomputed.

A rerun into the same output folder keeps every record whose inputs are unchanged: the model's
weights (sha256) and, for Hugging Face folders, its preprocessing; the dataset (fingerprint of
every split the task reads, with the class names and templates it carries, packaged or not); the
versions of the packages that build the data (clip-benchmark for its datasets) and compute the
model's features (open_clip_torch or transformers); the protocol parameters, the benchmark's
definition and the VERSION OF ITS TASK (a fix to one task recomputes that task's records only),
and whose per-sample sidecar is present and intact.
Records of schema v1 (before task versions and sidecars) are recomputed. Records are written
atomically, so a killed run leaves whole records of what it finished and nothing of the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from silc_eval.core.fingerprint import remembered_sha256
from silc_eval.core.provenance import package_versions
from silc_eval.core.records import RECORD_SCHEMA_V1, record_path, sidecar_problem
from silc_eval.evaluate.api import build_splits, splits_fingerprint
from silc_eval.evaluate.limit import limit_splits
from silc_eval.models.hf_model import folder_preprocessing, inspect_hf_folder, weights_digest
from silc_eval.models.loading import find_weights_file, parse_model_spec
from silc_eval.registry import Benchmark
from silc_eval.report.records import read_one

RESUME_INPUTS = ("model sha256, precision and preprocessing, dataset fingerprint, protocol, task version, data and "
                 "model package versions")


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
    if parsed.kind == "hf":
        return weights_digest(inspect_hf_folder(parsed.path).weights)
    return remembered_sha256(parsed.path if parsed.kind in ("checkpoint", "big_vision")
                             else find_weights_file(parsed.path))


def spec_preprocessing(spec: str) -> dict | None:
    """Return the preprocessing a model spec's records carry, read without its weights (hf: folders; None for
    open_clip specs, whose transform is part of the architecture)."""
    parsed = parse_model_spec(spec)
    return as_json(folder_preprocessing(parsed.path)) if parsed.kind == "hf" else None


def as_json(value):
    """Return value as it reads back from a JSON record (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, sort_keys=True))


def identity_packages(spec_kind: str, benchmark: Benchmark) -> tuple[str, ...]:
    """Return the packages whose code builds this benchmark's data or computes the model's features: a new version
    of one makes a resumed run recompute (clip-benchmark for its datasets, the model's library)."""
    model_library = {"hf": "transformers"}.get(spec_kind, "open_clip_torch")
    data = ("clip-benchmark",) if benchmark.dataset.get("format") == "clip_benchmark" else ()
    return data + (model_library,)


def changed_inputs(record: dict, sha256: str, benchmark: Benchmark, preprocessing: dict | None = None,
                   packages: dict[str, str] | None = None, precision: str = "fp32") -> list[str]:
    """Return what differs between a record and this run, leaving out the dataset fingerprint ([] if nothing).

    packages: the current versions of the identity packages (identity_packages) to compare with the record's;
    precision: the run's model precision (records written before it was recorded ran in fp32)."""
    changes = []
    if record["model"]["sha256"] != sha256:
        changes.append("model weights changed (sha256)")
    recorded_precision = record["model"].get("precision", "fp32")
    if recorded_precision != precision:
        changes.append(f"model precision {recorded_precision} -> {precision}")
    recorded = record.get("provenance", {}).get("packages", {})
    for name, version in sorted((packages or {}).items()):
        if recorded.get(name) != version:
            changes.append(f"{name} {recorded.get(name, '(unrecorded)')} -> {version}")
    if record["model"].get("preprocessing") != preprocessing:
        changes.append("model preprocessing changed (processor or tokenizer configuration)")
    found, current = record["benchmark"].get("task_version"), benchmark.task_spec.version
    if found != current:
        changes.append(f"task {benchmark.task} version {found} -> {current}")
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
    if record["schema"] == RECORD_SCHEMA_V1:
        return None, "record schema v1 (written before per-task versions and per-sample sidecars)"
    if (record["model"]["name"], record["benchmark"]["name"]) != (model_name, benchmark.name):
        return None, (f"foreign record (of {record['model']['name']} on {record['benchmark']['name']})")
    sections_ok = all(isinstance(record.get(k), dict) for k in ("dataset", "protocol", "provenance"))
    if not sections_ok or not record["dataset"].get("fingerprint") or benchmark.main_metric not in record["metrics"]:
        return None, "malformed record (no dataset fingerprint, protocol, provenance or main metric)"
    problem = sidecar_problem(path, record)
    if problem:
        return None, problem
    return record, None


def plan_resume(output: Path, model_specs: Sequence[str], benchmarks: Sequence[Benchmark],
                roots: dict[str, Path], limit: int | None = None, precision: str = "fp32") -> ResumePlan:
    """Return which records under output a run of model_specs x benchmarks can keep.

    Model weights are hashed and datasets fingerprinted only where an earlier record exists; the
    splits are built without a transform for their fingerprints (no image is read).
    """
    plan, fingerprints = ResumePlan(), {}
    for spec in model_specs:
        parsed = parse_model_spec(spec)
        name, sha256, preprocessing = parsed.name, None, None
        for benchmark in benchmarks:
            record, problem = existing_record(record_path(output, name, benchmark.name), name, benchmark)
            if record is None:
                if problem:
                    plan.stale.append((name, benchmark.name, problem))
                continue
            if record.get("limit") != limit:  # a --limit smoke record is never a full result, nor the reverse
                found = f"the first {record['limit']} samples" if record.get("limit") else "all samples"
                wanted = f"the first {limit}" if limit else "all samples"
                plan.stale.append((name, benchmark.name, f"record of {found}, this run evaluates {wanted}"))
                continue
            if sha256 is None:
                sha256, preprocessing = weights_sha256(spec), spec_preprocessing(spec)
            versions = package_versions(identity_packages(parsed.kind, benchmark))
            changes = changed_inputs(record, sha256, benchmark, preprocessing, versions, precision)
            if not changes:
                key = (json.dumps(benchmark.dataset, sort_keys=True), benchmark.task_spec.splits)
                if key not in fingerprints:
                    fingerprints[key] = splits_fingerprint(limit_splits(build_splits(benchmark, roots[benchmark.name],
                                                                                     None), limit))
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
