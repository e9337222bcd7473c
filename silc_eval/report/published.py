"""Published numbers (model_zoo/published.yaml): loaded, validated, and laid out as rows.

Values are in %, as the sources print them. Every entry names its source and protocol;
benchmarks are silc-eval benchmark names, or names the file declares under
`undefined_benchmarks` (reported in papers, not defined here yet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from silc_eval.core.errors import UserError
from silc_eval.core.paths import PROJECT_ROOT
from silc_eval.core.schema import load_yaml

PUBLISHED_SCHEMA = "silc-eval/published/v1"
TOP_KEYS = {"schema", "description", "undefined_benchmarks", "entries"}
ENTRY_REQUIRED = {"method", "backbone", "scores", "source", "protocol"}
ENTRY_OPTIONAL = {"verified", "note"}


def default_published_path() -> Path:
    """Return the path of the project's published numbers (model_zoo/published.yaml)."""
    return PROJECT_ROOT / "model_zoo" / "published.yaml"


@dataclass(frozen=True)
class PublishedEntry:
    """One published result: a method on a backbone, {benchmark: {metric: value in %}}, and where it is from."""

    method: str
    backbone: str
    scores: dict[str, dict[str, float]]
    source: str
    protocol: str
    verified: bool = False
    note: str = ""

    @property
    def label(self) -> str:
        """Return the row label of this entry in a table: 'method (backbone)'."""
        return f"{self.method} ({self.backbone})"


def _fail(path: Path, message: str) -> UserError:
    return UserError(f"{path}: {message}")


def _check_keys(path: Path, where: str, data: dict, allowed: set, required: set = frozenset()) -> None:
    """Like silc_eval.core.schema.check_keys (same 'PATH: what is wrong; what was expected' form), but in the
    words of this file's table: 'unknown column' / "missing 'KEY'", which users of published.yaml see."""
    unknown = sorted(str(k) for k in set(data) - allowed)
    if unknown:
        raise _fail(path, f"unknown column '{unknown[0]}' in {where}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(data))
    if missing:
        raise _fail(path, f"missing '{missing[0]}' in {where}; required: {', '.join(sorted(required))}")


def _parse_scores(path: Path, where: str, scores: Any, known: set[str]) -> dict[str, dict[str, float]]:
    if not isinstance(scores, dict) or not scores:
        raise _fail(path, f"'scores' of {where} must map benchmark names to {{metric: value in %}}")
    parsed = {}
    for benchmark, metrics in scores.items():
        if benchmark not in known:
            raise _fail(path, f"unknown benchmark '{benchmark}' in {where}; expected a name from "
                              f"benchmarks/definitions or one listed under undefined_benchmarks")
        if not isinstance(metrics, dict) or not metrics:
            raise _fail(path, f"{where}, {benchmark}: expected {{metric: value in %}}")
        for metric, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise _fail(path, f"{where}, {benchmark}.{metric} = {value!r}; expected a number in % (0-100)")
        parsed[str(benchmark)] = {str(m): float(v) for m, v in metrics.items()}
    return parsed


def parse_published(data: Any, path: Path, defined_benchmarks: Iterable[str]) -> list[PublishedEntry]:
    """Return the entries of a parsed published-numbers document; any mistake is a UserError naming path."""
    if not isinstance(data, dict):
        raise _fail(path, "expected a YAML mapping with 'schema' and 'entries'")
    _check_keys(path, "the top level", data, TOP_KEYS, {"schema", "entries"})
    if data["schema"] != PUBLISHED_SCHEMA:
        raise _fail(path, f"schema {data['schema']!r}; expected '{PUBLISHED_SCHEMA}'")
    undefined = data.get("undefined_benchmarks") or {}
    if not isinstance(undefined, dict):
        raise _fail(path, "'undefined_benchmarks' must map names to a description")
    known = set(defined_benchmarks) | set(undefined)
    if not isinstance(data["entries"], list) or not data["entries"]:
        raise _fail(path, "'entries' must be a non-empty list")
    entries, labels = [], set()
    for index, raw in enumerate(data["entries"]):
        where = f"entry {index + 1}"
        if not isinstance(raw, dict):
            raise _fail(path, f"{where} must be a mapping")
        _check_keys(path, where, raw, ENTRY_REQUIRED | ENTRY_OPTIONAL, ENTRY_REQUIRED)
        for key in ("method", "backbone", "source", "protocol"):
            if not isinstance(raw[key], str) or not raw[key].strip():
                raise _fail(path, f"{where}: '{key}' must be a non-empty text")
        entry = PublishedEntry(method=raw["method"], backbone=raw["backbone"],
                               scores=_parse_scores(path, f"{where} ({raw['method']})", raw["scores"], known),
                               source=raw["source"], protocol=raw["protocol"],
                               verified=bool(raw.get("verified", False)), note=str(raw.get("note", "")))
        if entry.label in labels:
            raise _fail(path, f"{where}: '{entry.label}' appears twice; expected one entry per method and backbone")
        labels.add(entry.label)
        entries.append(entry)
    return entries


def load_published(path: Path | None = None, defined_benchmarks: Iterable[str] | None = None) -> list[PublishedEntry]:
    """Return the validated entries of a published-numbers YAML (default: model_zoo/published.yaml).

    defined_benchmarks defaults to the names under benchmarks/definitions.
    """
    path = Path(path) if path else default_published_path()
    if not path.is_file():
        raise UserError(f"published numbers file {path} not found; expected a YAML file like "
                        f"model_zoo/published.yaml")
    data = load_yaml(path)
    if defined_benchmarks is None:
        from silc_eval.registry import benchmark_files

        defined_benchmarks = benchmark_files()  # names only: a malformed definition is not this file's concern
    return parse_published(data, path, defined_benchmarks)


def published_main_scores(entry: PublishedEntry, main_metrics: dict[str, str]) -> dict[str, float]:
    """Return {benchmark: value in %} of an entry's main-metric numbers for the benchmarks of main_metrics."""
    return {benchmark: entry.scores.get(benchmark, {}).get(metric, math.nan)
            for benchmark, metric in main_metrics.items()}
