"""Where result records and their per-sample sidecars live, and how a sidecar is written and read back.

A record is `OUTPUT/records/<model>/<benchmark>.json`; its per-sample outcomes are a compressed
numpy archive beside it, `<benchmark>.samples.npz`, named in the record with its sha256. Arrays
are plain numbers or unicode strings, so reading one never unpickles anything.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from silc_eval.core.errors import UserError
from silc_eval.core.io import atomic_write_bytes

RECORD_SCHEMA = "silc-eval/result/v2"
RECORD_SCHEMA_V1 = "silc-eval/result/v1"
RECORDS_DIR = "records"
SIDECAR_SUFFIX = ".samples.npz"


def safe_name(name: str) -> str:
    """Return name with every character outside [A-Za-z0-9._-] replaced by '_' (for file names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "unnamed"


def record_path(output: Path, model_name: str, benchmark_name: str) -> Path:
    """Return where the record of (model, benchmark) lives under an output folder."""
    return Path(output) / RECORDS_DIR / safe_name(model_name) / f"{safe_name(benchmark_name)}.json"


def sidecar_path(record_file: Path) -> Path:
    """Return the per-sample sidecar beside a record file."""
    record_file = Path(record_file)
    return record_file.with_name(record_file.name[:-len(".json")] + SIDECAR_SUFFIX)


def encode_samples(samples: Mapping[str, np.ndarray]) -> bytes:
    """Return the compressed .npz bytes of a task's per-sample outcomes (object arrays are refused)."""
    arrays = {name: np.asarray(value) for name, value in samples.items()}
    for name, array in arrays.items():
        if array.dtype == object:
            raise ValueError(f"per-sample outcome {name!r} is an object array; expected numbers or strings")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write_samples(record_file: Path, samples: Mapping[str, np.ndarray]) -> dict:
    """Write the sidecar of record_file atomically; returns its description for the record (file, sha256, arrays)."""
    data = encode_samples(samples)
    path = sidecar_path(record_file)
    atomic_write_bytes(path, data)
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(),
            "arrays": {name: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype)}
                       for name, v in samples.items()}}


def _sidecar_bytes(record_file: Path, record: Mapping) -> tuple[bytes | None, str | None]:
    """Return (the bytes of the sidecar a record names, None), or (None, why it is missing or not the one the
    record was written with)."""
    described = record.get("samples")
    if not isinstance(described, dict) or "file" not in described or "sha256" not in described:
        return None, "the record names no per-sample sidecar"
    path = Path(record_file).with_name(str(described["file"]))
    try:
        data = path.read_bytes()
    except OSError:
        return None, f"per-sample sidecar {path.name} is missing"
    if hashlib.sha256(data).hexdigest() != described["sha256"]:
        return None, f"per-sample sidecar {path.name} does not match the sha256 in its record"
    return data, None


def sidecar_problem(record_file: Path, record: Mapping) -> str | None:
    """Return why the sidecar a record names is missing or not the one it was written with (None if it is)."""
    return _sidecar_bytes(record_file, record)[1]


def read_samples(record_file: Path, record: Mapping) -> dict[str, np.ndarray]:
    """Return the per-sample outcomes of a record, checked against the sha256 the record holds (one read)."""
    data, problem = _sidecar_bytes(record_file, record)
    if problem:
        raise UserError(f"{record_file}: {problem}; rerun 'silc-eval run' into this folder to recompute it")
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
