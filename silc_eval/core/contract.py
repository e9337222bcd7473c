"""The task contract: what every task declares, checked when a benchmark is loaded (before any model).

A task is one module under silc_eval/tasks/ that defines `TASK = Task(...)` (the registry in
silc_eval/tasks/__init__.py lists them):

- name, version: the version is bumped whenever the task's numbers can change; a record
  keeps the version it was computed with, and resume recomputes only records whose task's
  version changed;
- params: name -> Param (default, type and range, see core/params.py);
- splits: the dataset splits the evaluate flow must build and hand over (`eval`, and
  `train` for tasks that fit a probe or a head); a task never opens files;
- formats: the dataset formats it can read, and data_kind: the kind of data it needs
  (classification, retrieval, segmentation, caption_selection or association; a clip_benchmark declaration may hold either of
  the first two);
- metrics: Metric(pattern, direction), a pattern may hold one {placeholder} (`acc1_{k}shot_mean`,
  `IoU.{class}`); direction is higher / lower / none (a spread, no better side);
- evaluate(model, data, params, progress) -> Outcome: the metrics and the per-sample outcomes;
- score(samples, params) -> metrics: the metrics recomputed from the per-sample outcomes alone.
  evaluate returns score(samples, params), so the two agree exactly by construction;
- unit_statistics(samples, params) -> UnitStatistics (optional): the outcomes as additive per-image
  (and per-seed) statistics from which core/resampling.py bootstraps intervals and paired tests;
  with every image and seed taken once they give score's metrics exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from silc_eval.core.params import Param, defaults, validate_params
from silc_eval.core.resampling import UnitStatistics

DIRECTIONS = ("higher", "lower", "none")
SPLITS = ("eval", "train")


@dataclass(frozen=True)
class Metric:
    """A metric (or a family of metrics, through one {placeholder}) and which direction is better."""

    pattern: str
    direction: str = "higher"

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.pattern}: direction {self.direction!r} not in {DIRECTIONS}")

    @property
    def regex(self) -> re.Pattern:
        """Return the full-match regex of the pattern ({...} matches one or more characters)."""
        parts = re.split(r"\{[^}]*\}", self.pattern)
        return re.compile(".+".join(re.escape(p) for p in parts) + r"\Z")

    def matches(self, name: str) -> bool:
        """Return whether the metric name belongs to this pattern."""
        return bool(self.regex.match(name))


@dataclass
class Outcome:
    """What a task returns: metrics (fractions, None where undefined) and per-sample outcomes (numpy arrays)."""

    metrics: dict[str, float | None]
    samples: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One task's complete contract (see the module docstring)."""

    name: str
    version: int
    params: Mapping[str, Param]
    splits: tuple[str, ...]
    formats: tuple[str, ...]
    data_kind: str
    metrics: tuple[Metric, ...]
    evaluate: Callable[..., Outcome]
    score: Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], dict[str, float | None]]
    description: str = ""
    unit_statistics: Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], UnitStatistics] | None = None

    def __post_init__(self):
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown or "eval" not in self.splits:
            raise ValueError(f"task {self.name}: splits {self.splits} must include 'eval' and lie in {SPLITS}")
        if not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"task {self.name}: version must be a positive integer")

    @property
    def default_params(self) -> dict[str, Any]:
        """Return {parameter: default}."""
        return defaults(self.params)

    def protocol(self, params: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Return the defaults overlaid with params after checking them (a UserError naming where otherwise)."""
        return validate_params(self.params, params, f"{where}: task {self.name}")

    def metric_of(self, name: str) -> Metric | None:
        """Return the declared Metric a metric name belongs to (the first matching pattern), or None."""
        return next((m for m in self.metrics if m.matches(name)), None)

    def direction(self, name: str) -> str | None:
        """Return the direction of a metric name, or None if the task does not declare it."""
        metric = self.metric_of(name)
        return metric.direction if metric else None
