"""Benchmarks and suites declared as YAML under benchmarks/; validated on load.

A benchmark is (task, dataset, protocol parameters, main metric); a suite is a named
list of benchmarks. Files: benchmarks/definitions/<name>.yaml, benchmarks/suites/<name>.yaml.

A definition with `languages` (a multilingual dataset) stands for one benchmark per language,
`<name>-<language>`, its dataset declaration given that `language`: a suite or `--benchmark` naming
`<name>` runs every language whose data is present (skipping the others, as a suite does),
`<name>-<language>` one of them. Each language is its own record; the
definition's group holds them all, so the report's group mean is the mean over languages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from silc_eval.core.contract import Task
from silc_eval.core.errors import UserError
from silc_eval.core.paths import benchmarks_dir, extra_benchmark_dirs
from silc_eval.core.schema import check_keys, load_yaml_mapping
from silc_eval.data.clip_benchmark_bridge import MULTILINGUAL_DATASETS, supported_languages
from silc_eval.data.formats import format_of
from silc_eval.tasks import TASKS

BENCHMARK_REQUIRED = {"name", "task", "dataset", "main_metric", "group"}
BENCHMARK_OPTIONAL = {"params", "description", "languages"}
SUITE_REQUIRED = {"name", "benchmarks"}
SUITE_OPTIONAL = {"description"}


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
    languages: tuple[str, ...] = ()  # a multilingual definition before expand_languages; () for one benchmark

    @property
    def task_spec(self) -> Task:
        """Return the contract of this benchmark's task."""
        return TASKS[self.task]

    def protocol(self) -> dict[str, Any]:
        """Return the task's default parameters overlaid with this benchmark's (validated when it was loaded)."""
        return self.task_spec.protocol(self.params, str(self.file or self.name))


@dataclass(frozen=True)
class Suite:
    """A named, ordered list of benchmark names."""

    name: str
    benchmarks: tuple[str, ...]
    description: str = ""
    file: Path | None = None


def task_contract(name: str) -> Task | None:
    """Return the contract of the task called name, or None for a task this version does not know."""
    return TASKS.get(name)


def parse_benchmark(path: Path) -> Benchmark:
    """Return the Benchmark declared in path after checking it against its task's contract (keys, dataset
    format, kind and splits, parameter types and ranges, main metric); errors are UserErrors naming the file."""
    data = load_yaml_mapping(path)
    check_keys(path, "benchmark", data, BENCHMARK_REQUIRED, BENCHMARK_OPTIONAL)
    if data["name"] != path.stem:
        raise UserError(f"{path}: name '{data['name']}' must equal the file name '{path.stem}'")
    if data["task"] not in TASKS:
        raise UserError(f"{path}: unknown task '{data['task']}'; expected one of {', '.join(sorted(TASKS))}")
    task, dataset = TASKS[data["task"]], data["dataset"]
    fmt = format_of(dataset, str(path))
    if dataset["format"] not in task.formats:
        raise UserError(f"{path}: task {task.name} reads {', '.join(task.formats)} datasets, not {dataset['format']}")
    if fmt.kind(dataset) != task.data_kind:
        raise UserError(f"{path}: dataset {dataset['name']} holds {fmt.kind(dataset)} data, which does not fit "
                        f"task {task.name}; it needs {task.data_kind} data")
    for split in task.splits:
        if not fmt.has_split(dataset, split):
            raise UserError(f"{path}: task {task.name} needs a {split} split, which dataset {dataset['name']} does not "
                            f"declare (imagefolder: train_root; clip_benchmark/wds: train_split; mmseg: a 'train:' "
                            f"mapping)")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise UserError(f"{path}: params must be a mapping of parameter names to values")
    task.protocol(params, str(path))
    if not isinstance(data["main_metric"], str) or task.metric_of(data["main_metric"]) is None:
        raise UserError(f"{path}: main_metric {data['main_metric']!r} is not a metric of task {task.name}; expected "
                        f"one of {', '.join(m.pattern for m in task.metrics)}")
    languages = _languages(path, data, dataset)
    return Benchmark(name=data["name"], task=task.name, group=data["group"], main_metric=data["main_metric"],
                     dataset=dataset, params=params, description=data.get("description", ""), file=path,
                     languages=languages)


def _languages(path: Path, data: dict, dataset: dict) -> tuple[str, ...]:
    """Return a definition's checked `languages` (() when it has none); a multilingual dataset needs them."""
    multilingual = dataset.get("format") == "clip_benchmark" and dataset.get("dataset") in MULTILINGUAL_DATASETS
    if "languages" not in data:
        if multilingual and "language" not in dataset:
            raise UserError(f"{path}: clip-benchmark's '{dataset['dataset']}' is multilingual; expected "
                            f"'languages: [...]' (or 'languages: all') or dataset.language")
        return ()
    if not multilingual or "language" in dataset:
        raise UserError(f"{path}: 'languages' needs a multilingual clip_benchmark dataset without dataset.language "
                        f"(one of {', '.join(MULTILINGUAL_DATASETS)})")
    supported = supported_languages(dataset["dataset"])
    languages = supported if data["languages"] == "all" else data["languages"]
    if not isinstance(languages, list) or not languages or not all(isinstance(x, str) for x in languages):
        raise UserError(f"{path}: 'languages' must be 'all' or a non-empty list of language codes")
    unknown = [x for x in languages if x not in supported]
    if unknown:
        raise UserError(f"{path}: clip-benchmark's '{dataset['dataset']}' has no language '{unknown[0]}'; expected "
                        f"some of {', '.join(supported)}")
    return tuple(dict.fromkeys(languages))


def expand_languages(benchmark: Benchmark) -> list[Benchmark]:
    """Return a multilingual definition's one benchmark per language (`<name>-<language>`, its dataset given that
    language and a per-language name), or [benchmark] for a definition without languages."""
    if not benchmark.languages:
        return [benchmark]
    return [replace(benchmark, name=f"{benchmark.name}-{language}", languages=(),
                    dataset={**benchmark.dataset, "language": language,
                             "name": f"{benchmark.dataset['name']}-{language}"})
            for language in benchmark.languages]


def _parse_named(name: str, files: dict[str, Path]) -> list[Benchmark]:
    """Return the benchmarks a name stands for: a definition (every language of a multilingual one) or one language
    `<definition>-<language>` of a multilingual definition; an unknown name lists the valid ones."""
    if name in files:
        benchmark = parse_benchmark(files[name])
        # every language of a multilingual definition: run those whose data is present, as a suite does
        return expand_languages(replace(benchmark, suite=name) if benchmark.languages else benchmark)
    for stem in sorted((s for s in files if name.startswith(f"{s}-")), key=len, reverse=True):
        benchmark = parse_benchmark(files[stem])
        chosen = [b for b in expand_languages(benchmark) if b.name == name]
        if benchmark.languages and chosen:
            return chosen
    raise UserError(f"unknown benchmark '{name}'; expected one of {', '.join(files)} (a multilingual one also as "
                    f"<name>-<language>)")


def parse_suite(path: Path) -> Suite:
    """Return the Suite declared in path, validating every key."""
    data = load_yaml_mapping(path)
    check_keys(path, "suite", data, SUITE_REQUIRED, SUITE_OPTIONAL)
    if data["name"] != path.stem:
        raise UserError(f"{path}: name '{data['name']}' must equal the file name '{path.stem}'")
    if not isinstance(data["benchmarks"], list) or not data["benchmarks"]:
        raise UserError(f"{path}: 'benchmarks' must be a non-empty list of benchmark names")
    return Suite(name=data["name"], benchmarks=tuple(data["benchmarks"]), description=data.get("description", ""),
                 file=path)


def _yaml_files(root: Path | None, folder: str, kind: str) -> dict[str, Path]:
    """Return {name: file} of root/folder/*.yaml, or without root of the built-in folder and every extra one
    (extra_benchmark_dirs); a name defined twice is a UserError naming both files."""
    roots = [Path(root)] if root else [benchmarks_dir(), *extra_benchmark_dirs()]
    for extra in roots[1:]:
        if not extra.is_dir():
            raise UserError(f"extra benchmarks folder {extra} does not exist; expected a folder with definitions/ "
                            f"and/or suites/ of YAML files")
    found: dict[str, Path] = {}
    for base in roots:
        for path in sorted((base / folder).glob("*.yaml")):
            if path.stem in found:
                raise UserError(f"{kind} '{path.stem}' is defined twice: {found[path.stem]} and {path}; expected "
                                f"extra benchmark folders to add names, not to replace built-in ones")
            found[path.stem] = path
    return dict(sorted(found.items()))


def benchmark_files(root: Path | None = None) -> dict[str, Path]:
    """Return {name: file} of every benchmark definition under root/definitions (default: the built-in folder and
    the extra ones), in name order, unparsed (a benchmark's name is its file's stem; the file is read only when the
    benchmark is asked for)."""
    return _yaml_files(root, "definitions", "benchmark")


def suite_files(root: Path | None = None) -> dict[str, Path]:
    """Return {name: file} of every suite under root/suites (default: built-in and extra folders), in name order."""
    return _yaml_files(root, "suites", "suite")


def load_benchmarks(root: Path | None = None,
                    on_error: Callable[[UserError], None] | None = None) -> dict[str, Benchmark]:
    """Return every benchmark under root/definitions, by name, in name order.

    A malformed file is a UserError naming it; with on_error, it is handed to on_error and left out.
    """
    benchmarks = {}
    for name, path in benchmark_files(root).items():
        try:
            benchmarks[name] = parse_benchmark(path)
        except UserError as exc:
            if on_error is None:
                raise
            on_error(exc)
    for name, benchmark in list(benchmarks.items()):
        if benchmark.group in benchmarks:  # a report's columns hold benchmarks and group means side by side
            exc = UserError(f"{benchmark.file}: group '{benchmark.group}' is also the name of a benchmark; expected "
                            f"a group name that no benchmark has")
            if on_error is None:
                raise exc
            on_error(exc)
            del benchmarks[name]
    return benchmarks


def check_suite(path: Path, benchmark_names: Iterable[str]) -> Suite:
    """Return the Suite declared in path after checking that every benchmark it names is defined."""
    suite = parse_suite(path)
    names = list(benchmark_names)
    unknown = [name for name in suite.benchmarks if name not in names]
    if unknown:
        raise UserError(f"{path}: unknown benchmark '{unknown[0]}'; expected one of {', '.join(names)}")
    return suite


def load_suites(root: Path | None = None, benchmarks: Iterable[str] | None = None,
                on_error: Callable[[UserError], None] | None = None) -> dict[str, Suite]:
    """Return every suite under root/suites, by name; each suite's benchmarks must be defined.

    benchmarks, when given, are the defined benchmark names (default: the files under root/definitions,
    which are not parsed here). A malformed suite is a UserError naming it; with on_error, it is handed
    to on_error and left out.
    """
    names = list(benchmarks) if benchmarks is not None else list(benchmark_files(root))
    suites = {}
    for name, path in suite_files(root).items():
        try:
            suites[name] = check_suite(path, names)
        except UserError as exc:
            if on_error is None:
                raise
            on_error(exc)
    return suites


def resolve_suite(name: str, root: Path | None = None) -> list[Benchmark]:
    """Return the benchmarks of suite name, in the suite's order; an unknown name lists the valid ones.

    Only this suite's file and its benchmarks' files are parsed: a malformed file elsewhere does not stop it.
    """
    suites = suite_files(root)
    if name not in suites:
        raise UserError(f"unknown suite '{name}'; expected one of {', '.join(suites)}")
    files = benchmark_files(root)
    suite = check_suite(suites[name], files)
    return [replace(b, suite=name) for stem in suite.benchmarks for b in expand_languages(parse_benchmark(files[stem]))]


def resolve_benchmarks(names: list[str], root: Path | None = None) -> list[Benchmark]:
    """Return the named benchmarks in the given order; an unknown name lists the valid ones.

    Only the named benchmarks' files are parsed: a malformed file elsewhere does not stop them.
    """
    files = benchmark_files(root)
    return [b for name in names for b in _parse_named(name, files)]
