"""Read the result records of a results folder for a report, naming every file that is not one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from silc_eval.core.errors import UserError
from silc_eval.core.log import warn as warn_stderr
from silc_eval.core.records import RECORD_SCHEMA, RECORD_SCHEMA_V1, RECORDS_DIR

# (section, key) pairs a record must carry for the report to place it.
REQUIRED_FIELDS = [("model", "name"), ("model", "sha256"), ("model", "source"), ("benchmark", "name"),
                   ("benchmark", "task"), ("benchmark", "group"), ("benchmark", "main_metric")]


def record_problem(record: Any) -> str | None:
    """Return why a parsed JSON value is not a usable result record, or None when it is one."""
    if not isinstance(record, dict):
        return f"not a silc-eval result record (a JSON {type(record).__name__}; expected an object)"
    if record.get("schema") not in (RECORD_SCHEMA, RECORD_SCHEMA_V1):
        return f"not a silc-eval result record (schema {record.get('schema')!r}; expected '{RECORD_SCHEMA}')"
    for section, key in REQUIRED_FIELDS:
        value = record.get(section, {}).get(key) if isinstance(record.get(section), dict) else None
        if not isinstance(value, str) or not value:
            return f"result record without {section}.{key}"
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return "result record without a metrics object"
    for name, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"metric {name!r} is {value!r}; expected a number or null"
    return None


def read_one(path: Path) -> tuple[dict | None, str | None]:
    """Return (record, None) for a valid record file, else (None, why it is not one)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({exc.__class__.__name__})"
    try:
        record = json.loads(text)
    except ValueError as exc:
        return None, f"not valid JSON ({str(exc).splitlines()[0]})"
    problem = record_problem(record)
    return (None, problem) if problem else (record, None)


def load_result_records(folder: Path, strict: bool = False,
                        warn: Callable[[str], None] = warn_stderr) -> list[dict[str, Any]]:
    """Return the valid records under folder/records/<model>/<benchmark>.json, in path order.

    A malformed or foreign JSON file is named through warn and skipped, or with strict=True
    raises a UserError. A missing folder, or one with no valid record, is a UserError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder {folder} not found; expected a folder written by 'silc-eval run' "
                        f"(holding {RECORDS_DIR}/<model>/<benchmark>.json)")
    paths = sorted((folder / RECORDS_DIR).glob("*/*.json"))
    if not paths:
        raise UserError(f"no result records in {folder}; expected {folder / RECORDS_DIR}/<model>/<benchmark>.json "
                        f"as written by 'silc-eval run'")
    records = []
    for path in paths:
        record, problem = read_one(path)
        if problem is None:
            records.append(record)
        elif strict:
            raise UserError(f"{path}: {problem} (--strict stops at the first bad file; without it, it is skipped)")
        else:
            warn(f"skipping {path}: {problem}")
    if not records:
        raise UserError(f"no valid result record in {folder / RECORDS_DIR} ({len(paths)} JSON files, none with "
                        f"schema '{RECORD_SCHEMA}')")
    return records
