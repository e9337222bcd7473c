"""On-disk cache of image and text features, keyed by everything that determines them.

Image key parts: the model's weights (sha256), the dataset (fingerprint and split), the eval
preprocessing (a stable description of the transform), the normalisation and the
precision. Text key parts: the model's weights (sha256), the sha256 of the token ids of every
text in order (so the prompt set and the tokenizer are both part of the key) and the
precision. Segmentation tasks also keep here their training windows' features and labels (key: the
windows' model, dataset, geometry and precision) and the heads they fit on them (machinery/heads.cached_fit;
key: those windows, the task, its parameters, the seed and the head code's version). An entry is two files
under `cache_dir()/features`:

- `<key>.npy`: the float32 (N, D) array;
- `<key>.json`: provenance (key parts, silc-eval version, creation time) and the data
  file's byte size and sha256.

The metadata file's modification time is the entry's last use (set on write, refreshed on every hit):
`silc-eval cache` (features/housekeeping.py) prunes the least recently used first.

The data file is written first and the metadata last, each atomically, so a run killed
midway leaves at worst a data file without metadata, which is never read as valid. On
read the data is checked against the metadata; a mismatch (truncated or corrupt file)
removes the entry, logs one line to stderr, and the caller recomputes.

Not cached: models without a known weights sha256 (their identity is unknown) and
transforms without a stable description (e.g. a plain function, whose repr holds a
memory address), so a cached entry can never be served for different inputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from silc_eval import __version__
from silc_eval.core import distributed
from silc_eval.core.io import atomic_write_bytes, atomic_write_json
from silc_eval.core.log import note
from silc_eval.core.paths import cache_dir

ENV_SWITCH = "SILC_EVAL_FEATURE_CACHE"
OFF_VALUES = {"off", "0", "false", "no", "disabled"}
SCHEMA = "silc-eval/feature-cache/v1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

# Counters tests and perf scripts read: images and texts the model actually encoded, segmentation heads actually
# fitted (machinery/heads.cached_fit), entries served, entries rebuilt.
STATS = {"images_computed": 0, "texts_computed": 0, "heads_fitted": 0, "hits": 0, "misses": 0, "rebuilt": 0}


def reset_stats() -> None:
    """Set every counter in STATS to zero; returns nothing."""
    for name in STATS:
        STATS[name] = 0


_FORCED_OFF = False


def enabled() -> bool:
    """Return False when switched off (`silc-eval run --no-feature-cache`, or $SILC_EVAL_FEATURE_CACHE is
    off/0/false/no/disabled), else True."""
    return not _FORCED_OFF and os.environ.get(ENV_SWITCH, "on").strip().lower() not in OFF_VALUES


@contextmanager
def switched_off(off: bool = True):
    """Context in which the cache is neither read nor written when off is True; yields nothing."""
    global _FORCED_OFF
    previous, _FORCED_OFF = _FORCED_OFF, _FORCED_OFF or off
    try:
        yield
    finally:
        _FORCED_OFF = previous


def features_dir() -> Path:
    """Return the folder holding cached features (cache_dir()/features)."""
    return cache_dir() / "features"


def describe_transform(transform: Callable | None) -> str | None:
    """Return a stable text description of an eval transform, or None when it has none.

    torchvision transforms (and open_clip's Compose) print their sizes, interpolation, crop
    and mean/std; a repr holding a memory address (functions, lambdas, plain objects) is not
    stable across runs, nor distinct between two such callables, so it gives None.
    """
    if transform is None:
        return "none"
    text = " ".join(repr(transform).split())
    return None if _ADDRESS.search(text) else text


def known_sha256(model) -> str | None:
    """Return the model's weights sha256 (lower-case hex) when it is a real digest, else None."""
    digest = str(getattr(model, "sha256", "") or "").lower()
    return digest if _SHA256.match(digest) else None


def cache_key(parts: dict[str, Any]) -> str:
    """Return the entry name for key parts: the first 32 hex digits of the sha256 of their sorted JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def key_parts(model, dataset, split: str | None, normalize: bool, precision: str) -> dict[str, Any] | None:
    """Return the key parts of (model, dataset, split, normalisation, precision), or None if not cacheable."""
    sha = known_sha256(model)
    fingerprint = getattr(dataset, "fingerprint", None)
    transform = getattr(dataset, "transform", getattr(model, "preprocess", None))
    preprocessing = describe_transform(transform)
    if sha is None or not fingerprint or preprocessing is None:
        return None
    return {"model_sha256": sha, "dataset_fingerprint": str(fingerprint), "split": split or "eval",
            "num_images": len(dataset), "preprocessing": preprocessing,
            "normalization": "l2" if normalize else "raw", "precision": precision}


def content_sha256(*tensors: torch.Tensor) -> str:
    """Return the sha256 of tensors' dtypes, shapes and values, in order (for keys of what was computed from them)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def text_key_parts(model, tokens: torch.Tensor, precision: str) -> dict[str, Any] | None:
    """Return the key parts of the (normalised) text features of token ids (N, L), or None if not cacheable."""
    sha = known_sha256(model)
    if sha is None:
        return None
    return {"kind": "text", "model_sha256": sha, "tokens_sha256": content_sha256(tokens),
            "num_texts": int(tokens.shape[0]), "normalization": "l2", "precision": precision}


def window_key_parts(model, dataset, split: str, feature: str, geometry: dict[str, Any], precision: str,
                     shard: tuple[int, int] = (0, 1)) -> dict[str, Any] | None:
    """Return the key parts of the frozen features of a segmentation split's windows, or None if not cacheable.

    feature names what the model computes per window (e.g. 'patch_tokens' or 'dense:<variant>');
    geometry holds every parameter that decides the windows (short side, window, stride);
    shard is (rank, world size) when each rank keeps only its own images' windows.
    """
    sha = known_sha256(model)
    fingerprint = getattr(dataset, "fingerprint", None)
    if sha is None or not fingerprint:
        return None
    return {"kind": "windows", "model_sha256": sha, "dataset_fingerprint": str(fingerprint), "split": split,
            "num_images": len(dataset), "feature": feature, "geometry": dict(sorted(geometry.items())),
            "normalization": list(model.normalization), "precision": precision, "shard": list(shard)}


def _paths(key: str, suffix: str = ".npy") -> tuple[Path, Path]:
    folder = features_dir()
    return folder / f"{key}{suffix}", folder / f"{key}.json"


def _log(message: str) -> None:
    note(f"feature cache: {message}")


def _remove(key: str) -> None:
    for path in (*_paths(key, ".npy"), *_paths(key, ".npz")):
        path.unlink(missing_ok=True)


def _verified(key: str, suffix: str, read: Callable[[bytes, dict], Any]) -> Any:
    """Return read(blob, metadata) of key's entry after checking the blob against its metadata, or None.

    None when there is no complete entry. A data file without metadata (a killed write), or
    one whose size, sha256 or content disagree with the metadata, is removed (one stderr
    line) so the caller recomputes.
    """
    data_path, meta_path = _paths(key, suffix)
    if not meta_path.exists():
        if data_path.exists():
            _log(f"entry {key} has data but no metadata (interrupted write); removing and recomputing")
            _remove(key)
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        blob = data_path.read_bytes()
        if meta.get("schema") != SCHEMA or len(blob) != meta["bytes"] or hashlib.sha256(blob).hexdigest() != meta["sha256"]:
            raise ValueError("data does not match its metadata (truncated or corrupt)")
        found = read(blob, meta)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log(f"entry {key} is unreadable ({exc}); removing and recomputing")
        _remove(key)
        STATS["rebuilt"] += 1
        return None
    touch(meta_path)
    return found


def touch(meta_path: Path) -> None:
    """Mark an entry as used now (its metadata's modification time: features/housekeeping.py prunes the least
    recently used first); a read-only cache is left as it is. Returns nothing."""
    try:
        os.utime(meta_path)
    except OSError:
        pass


def _read_array(blob: bytes, meta: dict) -> np.ndarray:
    array = np.load(io.BytesIO(blob), allow_pickle=False)
    if list(array.shape) != meta["shape"]:
        raise ValueError(f"shape {list(array.shape)} != {meta['shape']}")
    return array


def _read_arrays(blob: bytes, meta: dict) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    shapes = {name: list(array.shape) for name, array in arrays.items()}
    if shapes != meta["shapes"]:
        raise ValueError(f"arrays {shapes} != {meta['shapes']}")
    return arrays


def load(key: str) -> np.ndarray | None:
    """Return the cached float32 array of key after checking it against its metadata, or None (see _verified)."""
    return _verified(key, ".npy", _read_array)


def load_arrays(key: str) -> dict[str, np.ndarray] | None:
    """Return the cached named arrays of key (dtypes as stored) after checking them, or None (see _verified)."""
    return _verified(key, ".npz", _read_arrays)


def _write(key: str, parts: dict[str, Any], blob: bytes, described: dict[str, Any]) -> Path:
    data_path, meta_path = _paths(key, ".npz" if "shapes" in described else ".npy")
    atomic_write_bytes(data_path, blob)
    atomic_write_json(meta_path, {
        "schema": SCHEMA, "key": key, "key_parts": parts, **described,
        "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "silc_eval_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return data_path


def store(key: str, parts: dict[str, Any], array: np.ndarray) -> Path:
    """Write array (as float32) and its provenance under key (data first, metadata last, both atomic); returns
    the data path."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return _write(key, parts, buffer.getvalue(), {"shape": list(array.shape), "dtype": "float32"})


def store_arrays(key: str, parts: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write named arrays (dtypes kept, uncompressed .npz) and their provenance under key; returns the data path."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(array, order="C") for name, array in arrays.items()})  # 0-d stays 0-d
    return _write(key, parts, buffer.getvalue(), {
        "shapes": {name: list(array.shape) for name, array in arrays.items()},
        "dtypes": {name: str(array.dtype) for name, array in arrays.items()}})


def cached(parts: dict[str, Any] | None, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Return the cached array for key parts, or compute(), store and return it.

    parts None (not cacheable) or the cache switched off: compute() every time, nothing stored.
    Under torchrun see cached_sharded.
    """
    if parts is None or not enabled():
        return compute()
    if distributed.active():
        return cached_sharded(parts, compute)
    return _cached_here(parts, compute, load, store)


def _cached_here(parts: dict[str, Any], compute: Callable[[], Any], read: Callable[[str], Any],
                 write: Callable[[str, dict, Any], Path]) -> Any:
    """Return read(key) on a hit, else compute(), written unless it is None (this process alone)."""
    key = cache_key(parts)
    found = read(key)
    if found is not None:
        STATS["hits"] += 1
        return found
    STATS["misses"] += 1
    value = compute()
    if value is None:
        return None
    try:
        write(key, parts, value)
    except OSError as exc:  # a read-only or full disk must not fail the evaluation
        _log(f"could not store entry {key} ({exc}); continuing without caching it")
    return value


def cached_sharded(parts: dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Return, on every rank of a torchrun job, the cached array for key parts or the result of compute().

    Only rank 0 touches the cache: it looks the entry up and tells every rank whether it hit; on a
    hit it sends the array to every rank, on a miss every rank calls compute() (which shards the
    work and gathers the full array on every rank) and rank 0 stores the result. So all ranks
    agree on hit or miss, and no rank reads a file while another writes it.
    """
    key = cache_key(parts)
    array = load(key) if distributed.is_main() else None
    if distributed.broadcast_object(array is not None):
        STATS["hits"] += 1
        sent = distributed.broadcast_tensor(torch.from_numpy(array) if array is not None else None)
        return sent.numpy()
    STATS["misses"] += 1
    array = compute()
    if distributed.is_main():
        try:
            store(key, parts, array)
        except OSError as exc:
            _log(f"could not store entry {key} ({exc}); continuing without caching it")
    return array


def cached_arrays(parts: dict[str, Any] | None,
                  compute: Callable[[], dict[str, np.ndarray] | None]) -> dict[str, np.ndarray] | None:
    """Return the cached named arrays for key parts, or compute(), store and return them (compute() may give
    None: nothing to keep, nothing stored).

    parts None (not cacheable) or the cache switched off: compute() every time, nothing stored.
    This process alone reads and writes the entry: under torchrun, callers either put the shard
    in the key parts or agree on hit or miss across ranks themselves.
    """
    if parts is None or not enabled():
        return compute()
    return _cached_here(parts, compute, load_arrays, store_arrays)
