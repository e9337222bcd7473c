"""Class names and prompt templates: from a file, or from clip-benchmark's packaged lists."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from silc_eval.core.errors import UserError
from silc_eval.data.readers import read_lines

PACKAGED_PREFIX = "clip_benchmark:"


def _packaged(kind: str, dataset: str) -> list[str]:
    filename = {"classnames": "en_classnames.json", "templates": "en_zeroshot_classification_templates.json"}[kind]
    table = json.loads(resources.files("clip_benchmark.datasets").joinpath(filename).read_text(encoding="utf-8"))
    if dataset not in table:
        raise UserError(f"clip-benchmark packages no {kind} for '{dataset}'; it has: {', '.join(sorted(table))}")
    return list(table[dataset])


def is_packaged(value: str) -> bool:
    """Return whether a classnames/templates value names clip-benchmark's packaged list."""
    return str(value).startswith(PACKAGED_PREFIX)


def load_names(kind: str, value: str, root: Path) -> list[str]:
    """Return class names or templates: 'clip_benchmark:<dataset>' or a one-per-line file under root."""
    if is_packaged(value):
        return _packaged(kind, value[len(PACKAGED_PREFIX):])
    return read_lines(Path(root) / value, f"{kind} file")
