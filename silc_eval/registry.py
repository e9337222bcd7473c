"""Benchmarks and suites declared as YAML under benchmarks/; validated on load.

A benchmark is (task, dataset, protocol parameters, main metric); a suite is a named
list of benchmarks. Files: benchmarks/definitions/<name>.yaml, benchmarks/suites/<name>.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from silc_eval.core.errors import UserError
from silc_eval.core.paths import benchmarks_dir
from silc_eval.tasks import TASKS

BENCHMARK_REQUIRED = {"name", "task", "dataset", "main_metric", "group"}
BENCHMARK_OPTIONAL = {"params", "description"}
SUITE_REQUIRED = {"name", "benchmarks"}
SUITE_OPTIONAL = {"description"}
DATASET_SOURCES = ("synthscenes", "data-root")
DATASET_FIELDS = {
    "imagefolder": ({"name", "source", "format", "root", "classnames"}, {"templates", "train_root"}),
    "karpathy": ({"name", "source", "format", "annotations", "images"}, {"split"}),
    "coco_captions": ({"name", "source", "format", "annotations", "images"}, set()),
    "clip_benchmark": ({"name", "source", "format", "dataset", "root"},
                       {"split", "train_split", "classnames", "templates"}),
    "wds": ({"name", "source", "format", "root"}, {"split", "train_split", "classnames", "templates"}),
    "mmseg": ({"name", "source", "format", "images", "annotations", "num_classes", "classes"},
              {"split_file", "image_suffix", "annotation_suffix", "templates", "reduce_zero_label", "train",
               "background_name"}),
}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: what task runs on which data with which parameters, and its headline metric."""

    name: str
    task: str
    group: str
    main_metric: str
    dataset: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    file: Path | None = None
    suite: str | None = None  # the suite this benchmark was resolved from (a suite run skips missing data)

    def protocol(self) -> dict[str, Any]:
        """Return the task's default parameters overlaid with this benchmark's."""
        return {**TASKS[self.task].DEFAULT_PARAMS, **self.params}


@dataclass(frozen=True)
class Suite:
    """A named, ordered list of benchmark names."""

    name: str
    benchmarks: tuple[str, ...]
    description: str = ""
    file: Path | None = None


def _load_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping at the top level")
    return data


def check_keys(path: Path, what: str, data: dict, required: set, optional: set) -> None:
    """Raise a UserError naming path for the first unknown key or missing required field of data."""
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}' in {what}; allowed keys: "
                        f"{', '.join(sorted(required | optional))}")
    missing = sorted(required - set(data))
    if missing:
        raise UserError(f"{path}: missing field '{missing[0]}' in {what}; required: {', '.join(sorted(required))}")


def parse_benchmark(path: Path) -> Benchmark:
    """Return the Benchmark declared in path, validating every key; errors are UserErrors naming the file."""
    data = _load_yaml_mapping(path)
    check_keys(path, "benchmark", data, BENCHMARK_REQUIRED, BENCHMARK_OPTIONAL)
    if data["name"] != path.stem:
        raise UserError(f"{path}: name '{data['name']}' must equal the file name '{path.stem}'")
    task = data["task"]
    if task not in TASKS:
        raise UserError(f"{path}: unknown task '{task}'; expected one of {', '.join(sorted(TASKS))}")
    dataset = data["dataset"]
    if not isinstance(dataset, dict) or dataset.get("format") not in DATASET_FIELDS:
        raise UserError(f"{path}: dataset.format must be one of {', '.join(sorted(DATASET_FIELDS))}")
    if dataset["format"] not in TASKS[task].DATASET_FORMATS:
        raise UserError(f"{path}: task {task} reads {', '.join(TASKS[task].DATASET_FORMATS)} datasets, "
                        f"not {dataset['format']}")
    required, optional = DATASET_FIELDS[dataset["format"]]
    check_keys(path, "dataset", dataset, required, optional)
    if dataset["source"] not in DATASET_SOURCES:
        raise UserError(f"{path}: dataset.source must be one of {', '.join(DATASET_SOURCES)}")
    if dataset["format"] == "mmseg":
        from silc_eval.data.segmentation import check_declaration

        check_declaration(dataset, path)
    if dataset["format"] == "clip_benchmark":
        from silc_eval.data.clip_benchmark_bridge import layout_paths

        from silc_eval.data.clip_benchmark_bridge import RETRIEVAL_DATASETS

        try:
            layout_paths(dataset["dataset"], dataset.get("split", "test"))
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
        if (task == "retrieval") != (dataset["dataset"] in RETRIEVAL_DATASETS):
            raise UserError(f"{path}: clip-benchmark dataset '{dataset['dataset']}' does not fit task {task}; "
                            f"retrieval reads {', '.join(RETRIEVAL_DATASETS)}, classification the others")
    params = data.get("params") or {}
    unknown = sorted(set(params) - set(TASKS[task].DEFAULT_PARAMS))
    if unknown:
        raise UserError(f"{path}: unknown parameter '{unknown[0]}' for task {task}; allowed: "
                        f"{', '.join(sorted(TASKS[task].DEFAULT_PARAMS))}")
    return Benchmark(name=data["name"], task=task, group=data["group"], main_metric=data["main_metric"],
                     dataset=dataset, params=params, description=data.get("description", ""), file=path)


def parse_suite(path: Path) -> Suite:
    """Return the Suite declared in path, validating every key."""
    data = _load_yaml_mapping(path)
    check_keys(path, "suite", data, SUITE_REQUIRED, SUITE_OPTIONAL)
    if data["name"] != path.stem:
        raise UserError(f"{path}: name '{data['name']}' must equal the file name '{path.stem}'")
    if not isinstance(data["benchmarks"], list) or not data["benchmarks"]:
        raise UserError(f"{path}: 'benchmarks' must be a non-empty list of benchmark names")
    return Suite(name=data["name"], benchmarks=tuple(data["benchmarks"]), description=data.get("description", ""),
                 file=path)


def load_benchmarks(root: Path | None = None) -> dict[str, Benchmark]:
    """Return every benchmark under root/definitions, by name, in name order."""
    root = Path(root) if root else benchmarks_dir()
    return {b.name: b for b in (parse_benchmark(p) for p in sorted((root / "definitions").glob("*.yaml")))}


def load_suites(root: Path | None = None, benchmarks: dict[str, Benchmark] | None = None) -> dict[str, Suite]:
    """Return every suite under root/suites, by name; each suite's benchmarks must exist.

    benchmarks, when given, are the already-loaded definitions (saves reading them again).
    """
    root = Path(root) if root else benchmarks_dir()
    benchmarks = benchmarks if benchmarks is not None else load_benchmarks(root)
    suites = {}
    for path in sorted((root / "suites").glob("*.yaml")):
        suite = parse_suite(path)
        unknown = [name for name in suite.benchmarks if name not in benchmarks]
        if unknown:
            raise UserError(f"{path}: unknown benchmark '{unknown[0]}'; expected one of {', '.join(benchmarks)}")
        suites[suite.name] = suite
    return suites


def resolve_suite(name: str, root: Path | None = None) -> list[Benchmark]:
    """Return the benchmarks of suite name, in the suite's order; an unknown name lists the valid ones."""
    benchmarks = load_benchmarks(root)
    suites = load_suites(root, benchmarks)
    if name not in suites:
        raise UserError(f"unknown suite '{name}'; expected one of {', '.join(suites)}")
    return [replace(benchmarks[b], suite=name) for b in suites[name].benchmarks]


def resolve_benchmarks(names: list[str], root: Path | None = None) -> list[Benchmark]:
    """Return the named benchmarks in the given order; an unknown name lists the valid ones."""
    benchmarks = load_benchmarks(root)
    for name in names:
        if name not in benchmarks:
            raise UserError(f"unknown benchmark '{name}'; expected one of {', '.join(benchmarks)}")
    return [benchmarks[n] for n in names]
