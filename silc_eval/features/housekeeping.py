"""What the feature cache holds, and pruning it: by size (least recently used first), by age, by model.

An entry (features/cache.py) is a data file (`<key>.npy` or `<key>.npz`) and its metadata
(`<key>.json`). Its last use is the metadata file's modification time: writing an entry
sets it and every hit refreshes it (cache.touch), so pruning to a size removes what has
gone longest unused. Removal takes the metadata first, then the data, so a run reading at the
same moment sees a miss, never an entry without its data.

Leftovers of killed runs are removed too, but only once they are an hour old (a younger one may be
a write in progress): data files without metadata and the temporary files of atomic writes
(`.<name>.*.tmp`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from silc_eval.features.cache import features_dir

KINDS = ("image", "text", "windows", "trained-head", "probe-predictions")
LEFTOVER_AGE_S = 3600.0
_DATA_SUFFIXES = (".npy", ".npz")


@dataclass(frozen=True)
class Entry:
    """One complete cache entry: its key, kind, files, bytes on disk, last use (epoch seconds) and model."""

    key: str
    kind: str
    files: tuple[Path, ...]
    bytes: int
    last_used: float
    model_sha256: str | None


@dataclass(frozen=True)
class Inventory:
    """The cache's complete entries and its leftovers (incomplete entries and temporary files, with their age)."""

    entries: tuple[Entry, ...]
    leftovers: tuple[tuple[Path, float], ...]

    @property
    def bytes(self) -> int:
        """Return the bytes of the complete entries."""
        return sum(e.bytes for e in self.entries)


def _kind(parts: dict) -> str:
    found = parts.get("kind", "image")
    return found if found in KINDS else str(found)


def _model_of(parts: dict) -> str | None:
    if "model_sha256" in parts:
        return parts["model_sha256"]
    windows = parts.get("windows")
    return windows.get("model_sha256") if isinstance(windows, dict) else None


def take_inventory(folder: Path | None = None, now: float | None = None) -> Inventory:
    """Return the Inventory of the feature cache folder (default: the active cache's); an absent folder is empty."""
    folder = features_dir() if folder is None else Path(folder)
    now = time.time() if now is None else now
    if not folder.is_dir():
        return Inventory((), ())
    entries, leftovers, claimed = [], [], set()
    for meta_path in sorted(folder.glob("*.json")):
        data = [meta_path.with_suffix(s) for s in _DATA_SUFFIXES if meta_path.with_suffix(s).exists()]
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            stat = meta_path.stat()
            parts = meta.get("key_parts", {})
        except (OSError, ValueError, AttributeError):
            continue  # written or removed under us, or not an entry: the cache's own reader decides
        claimed.update(data)
        if not data:
            continue
        size = stat.st_size + sum(p.stat().st_size for p in data)
        entries.append(Entry(meta_path.stem, _kind(parts), (meta_path, *data), size, stat.st_mtime,
                             _model_of(parts)))
    for path in sorted(folder.iterdir()):
        orphan = path.suffix in _DATA_SUFFIXES and path not in claimed
        temporary = path.name.startswith(".") and path.name.endswith(".tmp")
        if orphan or temporary:
            try:
                leftovers.append((path, now - path.stat().st_mtime))
            except OSError:
                continue
    return Inventory(tuple(entries), tuple(leftovers))


def summary(inventory: Inventory) -> list[dict]:
    """Return one row per kind present: {kind, entries, bytes, oldest_use, newest_use} (uses in epoch seconds)."""
    rows = []
    for kind in sorted({e.kind for e in inventory.entries}, key=lambda k: (KINDS.index(k) if k in KINDS else 99, k)):
        group = [e for e in inventory.entries if e.kind == kind]
        rows.append({"kind": kind, "entries": len(group), "bytes": sum(e.bytes for e in group),
                     "oldest_use": min(e.last_used for e in group), "newest_use": max(e.last_used for e in group)})
    return rows


def select_for_pruning(inventory: Inventory, max_bytes: int | None = None, unused_days: float | None = None,
                       models: Sequence[str] = (), now: float | None = None) -> list[Entry]:
    """Return the entries to remove, least recently used first: those of the given model sha256s (or their
    prefixes), those unused for more than unused_days, then the least recently used until the rest fit in
    max_bytes."""
    now = time.time() if now is None else now
    ordered = sorted(inventory.entries, key=lambda e: (e.last_used, e.key))
    chosen: dict[str, Entry] = {}
    for entry in ordered:
        by_model = entry.model_sha256 is not None and any(entry.model_sha256.startswith(m) for m in models)
        too_old = unused_days is not None and now - entry.last_used > unused_days * 86400.0
        if by_model or too_old:
            chosen[entry.key] = entry
    if max_bytes is not None:
        kept = sum(e.bytes for e in ordered if e.key not in chosen)
        for entry in ordered:
            if kept <= max_bytes:
                break
            if entry.key not in chosen:
                chosen[entry.key] = entry
                kept -= entry.bytes
    return sorted(chosen.values(), key=lambda e: (e.last_used, e.key))


def stale_leftovers(inventory: Inventory, min_age_s: float = LEFTOVER_AGE_S) -> list[Path]:
    """Return the leftover files old enough to be no write in progress."""
    return [path for path, age in inventory.leftovers if age >= min_age_s]


def remove(entries: Iterable[Entry], leftovers: Iterable[Path] = ()) -> int:
    """Remove entries (metadata first, then data) and leftover files; return the bytes freed. Files already gone
    count as removed."""
    freed = 0
    for path in [*(p for entry in entries for p in entry.files), *leftovers]:  # an entry's files[0] is its metadata
        try:
            freed += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
    return freed
