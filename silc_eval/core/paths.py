"""Where the project's data files live: benchmark definitions and the model zoo."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


EXTRA_BENCHMARKS_ENV = "SILC_EVAL_EXTRA_BENCHMARKS"


def extra_benchmark_dirs() -> list[Path]:
    """Return the folders whose definitions/ and suites/ add to the built-in ones ($SILC_EVAL_EXTRA_BENCHMARKS,
    separated like PATH; --extra-benchmarks sets it)."""
    return [Path(p).expanduser() for p in os.environ.get(EXTRA_BENCHMARKS_ENV, "").split(os.pathsep) if p]


def benchmarks_dir() -> Path:
    """Return the folder of benchmark and suite YAML ($SILC_EVAL_BENCHMARKS overrides)."""
    return Path(os.environ.get("SILC_EVAL_BENCHMARKS", PROJECT_ROOT / "benchmarks"))


def zoo_dir() -> Path:
    """Return the model zoo folder ($SILC_EVAL_ZOO overrides)."""
    return Path(os.environ.get("SILC_EVAL_ZOO", PROJECT_ROOT / "model_zoo"))


def cache_dir() -> Path:
    """Return the cache folder for generated data and features ($SILC_EVAL_CACHE overrides)."""
    return Path(os.environ.get("SILC_EVAL_CACHE", Path.home() / ".cache" / "silc_eval"))
