"""Reference scores that `silc-eval check` compares records with: zoo cards, a CSV/YAML file, published numbers.

A reference file holds one row per (model, benchmark, metric):

    model,benchmark,metric,value[,tolerance][,model_sha256][,source]

as CSV (a header row, then one row per score) or as YAML (a list of mappings with those keys,
or a mapping whose `references` key holds that list). `value` and `tolerance` are fractions,
like the metrics in records; `nan` is a valid value (the metric is expected to be NaN).
`model_sha256`, when set, pins the weights: a record matches the row only with that sha256.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silc_eval.core.errors import UserError
from silc_eval.core.schema import load_yaml
from silc_eval.models.zoo import list_zoo, reference_scores

REQUIRED_COLUMNS = ("model", "benchmark", "metric", "value")
OPTIONAL_COLUMNS = ("tolerance", "model_sha256", "source")


@dataclass(frozen=True)
class Reference:
    """One reference score: the value a (model, benchmark, metric) should reach."""

    model: str
    benchmark: str
    metric: str
    value: float
    tolerance: float | None = None
    model_sha256: str = ""
    source: str = ""


def parse_fraction(text: Any, where: str, allow_nan: bool = True) -> float:
    """Return text as a fraction: '0.003' stays 0.003, '0.3pp' or '0.3%' become 0.003; 'nan' is NaN if allowed.

    Anything else, or a number outside [0, 1], is a UserError naming where it came from.
    """
    raw = str(text).strip()
    scale = 1.0
    for suffix in ("pp", "%"):
        if raw.lower().endswith(suffix):
            raw, scale = raw[: -len(suffix)].strip(), 0.01
            break
    try:
        value = float(raw) * scale
    except ValueError:
        raise UserError(f"{where}: '{text}' is not a number; expected a fraction like 0.003 or "
                        f"percentage points like 0.3pp") from None
    if math.isnan(value) and not allow_nan:
        raise UserError(f"{where}: a tolerance cannot be NaN; expected a fraction like 0.003 or 0.3pp")
    if not math.isnan(value) and not 0.0 <= value <= 1.0:
        hint = f"{value / 100:g} or {raw}pp" if 1 < value <= 100 else "0.683 or 68.3pp for 68.3%"
        raise UserError(f"{where}: {text} is outside [0, 1]; scores and tolerances are fractions (write {hint})")
    return value


def _reference_from_row(row: dict[str, Any], where: str) -> Reference:
    """Return the Reference of one parsed row (all columns already known to be allowed)."""
    for column in REQUIRED_COLUMNS:
        if row.get(column) is None or str(row[column]).strip() == "":
            raise UserError(f"{where}: missing '{column}'; every row needs {', '.join(REQUIRED_COLUMNS)}")
    tolerance = row.get("tolerance")
    has_tolerance = tolerance is not None and str(tolerance).strip() != ""
    return Reference(model=str(row["model"]).strip(), benchmark=str(row["benchmark"]).strip(),
                     metric=str(row["metric"]).strip(), value=parse_fraction(row["value"], where),
                     tolerance=parse_fraction(tolerance, where, allow_nan=False) if has_tolerance else None,
                     model_sha256=str(row.get("model_sha256") or "").strip(),
                     source=str(row.get("source") or "").strip())


def _check_columns(path: Path, columns, ignore_unknown: bool) -> None:
    """Raise a UserError naming path if columns lack a required one or (unless ignored) hold an unknown one."""
    allowed = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    unknown = [c for c in columns if c not in allowed]
    if unknown and not ignore_unknown:
        raise UserError(f"{path}: unknown column '{unknown[0]}'; allowed columns: {', '.join(allowed)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UserError(f"{path}: missing column '{missing[0]}'; required columns: {', '.join(REQUIRED_COLUMNS)}")


def _csv_rows(path: Path, ignore_unknown: bool) -> list[tuple[dict, str]]:
    """Return (row, where) pairs of a reference CSV, its header validated."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        _check_columns(path, [c.strip() for c in reader.fieldnames or []], ignore_unknown)
        rows = []
        for row in reader:
            if None in row:
                raise UserError(f"{path}, line {reader.line_num}: more cells than the header has columns")
            rows.append(({k.strip(): v for k, v in row.items()}, f"{path}, line {reader.line_num}"))
    return rows


def _yaml_rows(path: Path, ignore_unknown: bool) -> list[tuple[dict, str]]:
    """Return (row, where) pairs of a reference YAML (a list of mappings, or {references: [...]})."""
    data = load_yaml(path)
    if isinstance(data, dict) and "references" in data:
        data = data["references"]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise UserError(f"{path}: expected a list of mappings with keys {', '.join(REQUIRED_COLUMNS)}, "
                        f"or a mapping whose 'references' key holds that list")
    rows = []
    for index, row in enumerate(data):
        _check_columns(path, list(row), ignore_unknown)
        rows.append((row, f"{path}, entry {index + 1}"))
    return rows


def read_reference_file(path: Path, ignore_unknown_columns: bool = False) -> list[Reference]:
    """Return the references of a CSV or YAML file; bad files, columns or values are one-line UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path, ignore_unknown_columns)
    elif suffix in (".yaml", ".yml"):
        rows = _yaml_rows(path, ignore_unknown_columns)
    else:
        raise UserError(f"{path}: unknown reference file type '{suffix}'; expected .csv, .yaml or .yml")
    references = [_reference_from_row(row, where) for row, where in rows]
    seen: set[tuple[str, str, str]] = set()
    for ref in references:
        key = (ref.model, ref.benchmark, ref.metric)
        if key in seen:
            raise UserError(f"{path}: ({ref.model}, {ref.benchmark}, {ref.metric}) is listed twice")
        seen.add(key)
    return references


def zoo_references() -> list[Reference]:
    """Return every zoo card's reference scores, pinned to the card's weights sha256."""
    references = []
    for entry in list_zoo():
        sha256 = str(entry.card.get("weights", {}).get("sha256", ""))
        for benchmark, metrics in sorted(reference_scores(entry).items()):
            for metric, value in sorted((metrics or {}).items()):
                value = math.nan if value is None else float(value)
                references.append(Reference(entry.name, benchmark, metric, value, model_sha256=sha256,
                                            source=f"model_zoo/{entry.name}/card.yaml"))
    return references


def published_references() -> list[Reference]:
    """Return model_zoo/published.yaml as references: model 'method (backbone)', values turned into fractions."""
    from silc_eval.report.published import load_published

    return [Reference(entry.label, benchmark, metric, value / 100.0, source=entry.source)
            for entry in load_published() for benchmark, metrics in entry.scores.items()
            for metric, value in metrics.items()]
