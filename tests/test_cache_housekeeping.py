"""The feature cache's inventory and pruning (features/housekeeping.py) and `silc-eval cache`."""

from __future__ import annotations

import os

import numpy as np
import pytest

from silc_eval.cli import main
from silc_eval.features import cache as feature_cache
from silc_eval.features import housekeeping

NOW = 2_000_000_000.0
DAY = 86400.0
SHA_A, SHA_B = "a" * 64, "b" * 64


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SILC_EVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(feature_cache.ENV_SWITCH, raising=False)
    return tmp_path / "cache"


def put(parts: dict, rows: int, last_used: float) -> str:
    """Store an entry of rows x 8 float32 values with parts and set its last use; return its key."""
    key = feature_cache.cache_key(parts)
    if parts.get("kind") in ("windows", "trained-head"):
        feature_cache.store_arrays(key, parts, {"features": np.ones((rows, 8), np.float32)})
    else:
        feature_cache.store(key, parts, np.ones((rows, 8), np.float32))
    os.utime(feature_cache.features_dir() / f"{key}.json", (last_used, last_used))
    return key


def image_parts(sha: str, split: str) -> dict:
    return {"model_sha256": sha, "dataset_fingerprint": "f", "split": split, "num_images": 4, "preprocessing": "p",
            "normalization": "raw", "precision": "fp32"}


def windows_parts(sha: str) -> dict:
    return {"kind": "windows", "model_sha256": sha, "dataset_fingerprint": "f", "split": "train"}


@pytest.fixture
def populated(cache_root):
    """Five entries of four kinds, two models, last used 1 to 40 days before NOW."""
    keys = {
        "old-image": put(image_parts(SHA_A, "train"), 100, NOW - 40 * DAY),
        "text": put({"kind": "text", "model_sha256": SHA_B, "tokens_sha256": "t"}, 10, NOW - 20 * DAY),
        "windows": put(windows_parts(SHA_B), 300, NOW - 10 * DAY),
        "head": put({"kind": "trained-head", "windows": windows_parts(SHA_A), "seed": 0}, 5, NOW - 5 * DAY),
        "new-image": put(image_parts(SHA_B, "eval"), 100, NOW - 1 * DAY),
    }
    return keys


def test_inventory_finds_every_entry_with_its_kind_model_size_and_last_use(populated, cache_root):
    inventory = housekeeping.take_inventory(now=NOW)
    by_key = {e.key: e for e in inventory.entries}
    assert set(by_key) == set(populated.values())
    assert by_key[populated["text"]].kind == "text" and by_key[populated["head"]].kind == "trained-head"
    assert by_key[populated["old-image"]].kind == "image" and by_key[populated["windows"]].kind == "windows"
    assert by_key[populated["head"]].model_sha256 == SHA_A  # a head belongs to the model of its windows
    folder = cache_root / "features"
    assert inventory.bytes == sum(p.stat().st_size for p in folder.iterdir())
    assert by_key[populated["windows"]].last_used == NOW - 10 * DAY
    assert all(e.files[0].suffix == ".json" for e in inventory.entries)  # metadata goes first on removal
    rows = {r["kind"]: r for r in housekeeping.summary(inventory)}
    assert rows["image"]["entries"] == 2 and rows["image"]["oldest_use"] == NOW - 40 * DAY
    assert sum(r["bytes"] for r in rows.values()) == inventory.bytes


def test_pruning_to_a_size_removes_the_least_recently_used_until_the_rest_fit(populated):
    inventory = housekeeping.take_inventory(now=NOW)
    by_key = {e.key: e for e in inventory.entries}
    limit = inventory.bytes - by_key[populated["old-image"]].bytes - 1  # one byte short after the oldest goes
    chosen = housekeeping.select_for_pruning(inventory, max_bytes=limit, now=NOW)
    assert [e.key for e in chosen] == [populated["old-image"], populated["text"]]
    kept = inventory.bytes - sum(e.bytes for e in chosen)
    assert kept <= limit < kept + chosen[-1].bytes  # removing one entry fewer would not fit
    assert housekeeping.select_for_pruning(inventory, max_bytes=inventory.bytes, now=NOW) == []
    assert len(housekeeping.select_for_pruning(inventory, max_bytes=0, now=NOW)) == 5


def test_pruning_by_age_and_by_model(populated):
    inventory = housekeeping.take_inventory(now=NOW)
    old = housekeeping.select_for_pruning(inventory, unused_days=15, now=NOW)
    assert {e.key for e in old} == {populated["old-image"], populated["text"]}
    of_a = housekeeping.select_for_pruning(inventory, models=["aaaa"], now=NOW)
    assert {e.key for e in of_a} == {populated["old-image"], populated["head"]}
    both = housekeeping.select_for_pruning(inventory, unused_days=15, models=[SHA_A], now=NOW)
    assert {e.key for e in both} == {populated["old-image"], populated["text"], populated["head"]}


def test_a_hit_marks_the_entry_as_used(cache_root):
    parts = image_parts(SHA_A, "eval")
    put(parts, 4, 1000.0)
    meta = feature_cache.features_dir() / f"{feature_cache.cache_key(parts)}.json"
    assert meta.stat().st_mtime == 1000.0
    value = feature_cache.cached(parts, lambda: pytest.fail("a hit must not compute"))
    assert value.shape == (4, 8) and meta.stat().st_mtime > 1000.0


def test_leftovers_of_killed_runs_are_removed_only_when_old(populated, cache_root):
    folder = cache_root / "features"
    orphan = folder / ("c" * 32 + ".npy")
    orphan.write_bytes(b"x" * 10)
    temporary = folder / ".dddd.npy.k3j2.tmp"
    temporary.write_bytes(b"y" * 7)
    os.utime(orphan, (NOW - 2 * 3600, NOW - 2 * 3600))
    os.utime(temporary, (NOW - 60, NOW - 60))
    inventory = housekeeping.take_inventory(now=NOW)
    assert {p for p, _ in inventory.leftovers} == {orphan, temporary}
    assert len(inventory.entries) == 5  # leftovers are not entries
    stale = housekeeping.stale_leftovers(inventory)
    assert stale == [orphan]  # the minute-old temporary file may be a write in progress
    assert housekeeping.remove([], stale) == 10
    assert not orphan.exists() and temporary.exists()


def test_cli_shows_prunes_and_the_next_run_recomputes(populated, cache_root, capsys):
    assert main(["cache"]) == 0
    shown = capsys.readouterr().out
    assert "5 entries" in shown and "trained-head" in shown and "windows" in shown
    before = sorted(p.name for p in (cache_root / "features").iterdir())
    assert main(["cache", "--max-gb", "0", "--dry-run"]) == 0
    assert "would remove 5 entries" in capsys.readouterr().out
    assert sorted(p.name for p in (cache_root / "features").iterdir()) == before
    assert main(["cache", "--model-sha256", SHA_B[:8]]) == 0
    assert "removed 3 entries" in capsys.readouterr().out
    left = {e.key for e in housekeeping.take_inventory().entries}
    assert left == {populated["old-image"], populated["head"]}
    computed = []
    value = feature_cache.cached(image_parts(SHA_B, "eval"), lambda: computed.append(1) or np.zeros((4, 8)))
    assert computed == [1] and value.shape == (4, 8)


@pytest.mark.parametrize("argv,message", [
    (["--max-gb", "-1"], "--max-gb -1: expected a number >= 0"),
    (["--unused-days", "nan"], "--unused-days nan: expected a number >= 0"),
    (["--model-sha256", "xyz"], "--model-sha256 xyz: expected 4 to 64 hex digits"),
])
def test_bad_options_are_one_line_and_exit_2(populated, cache_root, capsys, argv, message):
    before = sorted(p.name for p in (cache_root / "features").iterdir())
    assert main(["cache", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"silc-eval: error: {message}") and "\n" not in err
    assert sorted(p.name for p in (cache_root / "features").iterdir()) == before


def test_an_absent_cache_is_empty(tmp_path):
    inventory = housekeeping.take_inventory(tmp_path / "nothing")
    assert inventory.entries == () and inventory.leftovers == () and inventory.bytes == 0
