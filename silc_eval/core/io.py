"""Atomic file writing: a reader never sees a half-written result.

Every failure of the filesystem while writing (a read-only folder, a full disk, a file where a
folder belongs) is a WriteError (core/errors.py): one line naming the path and the operating
system's reason. The temporary file, and any folder the failed write had created, are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from silc_eval.core.errors import UserError, WriteError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _make_folders(folder: Path) -> list[Path]:
    """Create folder and its missing parents; returns the folders created, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        try:
            created.mkdir()
        except FileExistsError:
            if not created.is_dir():
                raise
    return list(reversed(missing))


def _remove_folders(created: list[Path]) -> None:
    """Remove the folders a failed write created, innermost first, as far as they are still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def _open_temporary(folder: Path, name: str) -> tuple[int, str]:
    """Return (fd, path) of a new temporary file beside folder/name."""
    return tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")


def _write_all(handle, data: bytes) -> None:
    """Write data through an open binary file and flush it to the disk."""
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path through a temporary file and a rename; returns nothing.

    A failure of the filesystem is a WriteError naming path; nothing of the attempt is left behind.
    """
    path = Path(path)
    created: list[Path] = []
    tmp = None
    try:
        created = _make_folders(path.parent)
        fd, tmp = _open_temporary(path.parent, path.name)
        with os.fdopen(fd, "wb") as handle:
            _write_all(handle, data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the mode an ordinary open() would
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        _remove_folders(created)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(path, exc) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write text (UTF-8) atomically; returns nothing."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write obj as indented, key-sorted JSON atomically; returns nothing."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def check_writable_folder(folder: Path, what: str = "output folder") -> None:
    """Raise a UserError unless folder is a folder that can be written, or could be created and written;
    creates nothing (a probe file in the nearest existing folder is removed at once)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is an existing file; expected a folder (or a path where one can be created)")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {folder} cannot be created: {existing} is a file, not a folder")
    try:
        fd, probe = _open_temporary(existing, ".silc-eval-probe")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(f"{what} {folder} cannot be {'written' if existing == folder else 'created'}: "
                        f"{existing}: {reason}") from None
    os.close(fd)
    Path(probe).unlink(missing_ok=True)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed to final when the block succeeds.

    On any exception the temporary directory (and any parent folder made for it) is removed and
    final is left untouched. A failure of the filesystem in making the temporary directory or
    moving it into place is a WriteError naming final; what the block raises passes unchanged.
    """
    final = Path(final)
    try:
        created = _make_folders(final.parent)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    except OSError as exc:
        raise WriteError(final, exc) from None
    try:
        yield tmp
        try:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as exc:
            raise WriteError(final, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_folders(created)
        raise
