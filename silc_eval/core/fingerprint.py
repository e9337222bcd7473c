"""Fingerprints: a file's sha256 (remembered while the file is unchanged), and a dataset's short hash that
changes when the data a benchmark reads changes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from silc_eval.core.io import atomic_write_json
from silc_eval.core.paths import cache_dir

# Files with these suffixes are hashed by content; other files (images) by name and size,
# which keeps fingerprinting a 50k-image folder to a directory walk.
CONTENT_HASHED_SUFFIXES = {".json", ".txt", ".csv", ".yaml", ".yml", ".tsv"}


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remembered_sha256(path: Path) -> str:
    """Return the hex sha256 of a file, reusing the digest computed earlier while the file's resolved path,
    byte size and modification time (ns) are unchanged (a 600 MB checkpoint is hashed once, not every run).

    The digests live under cache_dir()/sha256; an unreadable or unwritable memo only costs a re-hash.
    """
    path = Path(path).resolve()
    stat = path.stat()
    identity = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    memo = cache_dir() / "sha256" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in identity} == identity and len(str(saved.get("sha256"))) == 64:
            return saved["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = file_sha256(path)
    try:
        atomic_write_json(memo, {**identity, "sha256": digest})
    except OSError:
        pass
    return digest


def resolved_paths(files: Iterable[Path]) -> list[Path]:
    """Return each file's Path.resolve(), resolving each folder once: a file that is no symbolic link resolves
    to its resolved folder joined with its name (a dataset of 50k images costs one lstat per file)."""
    folders: dict[Path, Path] = {}
    out = []
    for file in files:
        path = Path(file)
        folder = folders.get(path.parent)
        if folder is None:
            folder = folders[path.parent] = path.parent.resolve()
        joined = folder / path.name
        out.append(joined.resolve() if path.name in ("", ".", "..") or os.path.islink(joined) else joined)
    return out


def fingerprint_files(files: Iterable[Path], root: Path | None = None, full_content: bool = False) -> str:
    """Return a 16-hex-digit fingerprint of files, named relative to root.

    root defaults to the files' common folder, so moving a dataset does not change it.
    Text and annotation files are always hashed by content; other files by their
    relative name and byte size, or by content too when full_content is true.
    """
    paths = sorted(resolved_paths(files))
    root = Path(root).resolve() if root is not None else Path(os.path.commonpath(paths)) if paths else Path("/")
    digest = hashlib.sha256()
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if full_content or path.suffix.lower() in CONTENT_HASHED_SUFFIXES:
            item = f"{rel}\0content\0{file_sha256(path)}\n"
        else:
            item = f"{rel}\0size\0{path.stat().st_size}\n"
        digest.update(item.encode())
    return digest.hexdigest()[:16]


def fingerprint_tree(root: Path, full_content: bool = False) -> str:
    """Return the fingerprint of every regular file below root (hidden files excluded)."""
    root = Path(root)
    files = [p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return fingerprint_files(files, root, full_content=full_content)
