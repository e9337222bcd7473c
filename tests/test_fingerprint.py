"""A file's sha256 is remembered while its path, size and modification time are unchanged."""

import hashlib
import os
from pathlib import Path

from silc_eval.core import fingerprint


def test_a_checkpoint_is_hashed_once_while_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("SILC_EVAL_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"a" * 1000)
    calls = []
    real = fingerprint.file_sha256
    monkeypatch.setattr(fingerprint, "file_sha256", lambda path: calls.append(path) or real(path))

    first = fingerprint.remembered_sha256(weights)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest() and len(calls) == 1
    assert fingerprint.remembered_sha256(weights) == first and len(calls) == 1  # served from the memo

    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)  # same size, new content: the modification time moves on
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert fingerprint.remembered_sha256(weights) == hashlib.sha256(b"b" * 1000).hexdigest() and len(calls) == 2

    weights.write_bytes(b"b" * 999)  # another size
    assert fingerprint.remembered_sha256(weights) == hashlib.sha256(b"b" * 999).hexdigest() and len(calls) == 3


def test_a_corrupt_memo_only_costs_a_rehash(tmp_path, monkeypatch):
    monkeypatch.setenv("SILC_EVAL_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"xyz")
    digest = fingerprint.remembered_sha256(weights)
    (memo,) = (tmp_path / "cache" / "sha256").glob("*.json")
    memo.write_text("{not json")
    assert fingerprint.remembered_sha256(weights) == digest
    memo.write_text('{"path": "%s", "size": 3, "mtime_ns": %d, "sha256": "short"}' % (weights.resolve(),
                                                                                   weights.stat().st_mtime_ns))
    assert fingerprint.remembered_sha256(weights) == digest


def test_files_resolve_as_path_resolve_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "data" / "sub" / name).write_bytes(b"x")
    (tmp_path / "elsewhere" / "c.jpg").write_bytes(b"yy")
    os.symlink(tmp_path / "elsewhere" / "c.jpg", tmp_path / "data" / "sub" / "c.jpg")  # a linked file
    os.symlink(tmp_path / "data", tmp_path / "linked")  # a linked folder
    files = ["data/sub/a.jpg", tmp_path / "linked" / "sub" / "b.jpg", "linked/sub/../sub/c.jpg",
             tmp_path / "data" / "sub" / "missing.jpg"]
    assert fingerprint.resolved_paths(files) == [Path(f).resolve() for f in files]
