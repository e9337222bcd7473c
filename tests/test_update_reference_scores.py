"""model_zoo/update_reference_scores.py copies a results folder's metrics into the zoo cards it matches by sha256."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

from silc_eval.registry import resolve_suite

SCRIPT = Path(__file__).resolve().parents[1] / "model_zoo" / "update_reference_scores.py"


def load_script():
    spec = importlib.util.spec_from_file_location("update_reference_scores", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_card(folder: Path, sha: str, suite: str) -> Path:
    folder.mkdir(parents=True)
    path = folder / "card.yaml"
    path.write_text(yaml.safe_dump({"name": folder.name, "weights": {"sha256": sha}, "reference_suite": suite,
                                    "reference_scores": {"old": {"acc1": 0.5}}}))
    return path


def write_records(results: Path, sha: str, benchmarks: list[str]) -> None:
    for index, name in enumerate(benchmarks):
        folder = results / "records" / "some-model"
        folder.mkdir(parents=True, exist_ok=True)
        record = {"model": {"sha256": sha}, "benchmark": {"name": name}, "metrics": {"main": index / 3, "none": None}}
        (folder / f"{name}.json").write_text(json.dumps(record))


def test_suite_option_sets_the_reference_suite_and_copies_its_records(tmp_path, monkeypatch):
    script = load_script()
    matched = write_card(tmp_path / "zoo" / "a", "a" * 64, "quick")
    unmatched = write_card(tmp_path / "zoo" / "b", "b" * 64, "quick")
    everything = [b.name for b in resolve_suite("all")]
    write_records(tmp_path / "results", "a" * 64, everything)
    monkeypatch.setattr(script, "list_zoo", lambda: [SimpleNamespace(name=p.parent.name, folder=p.parent)
                                                     for p in (matched, unmatched)])
    monkeypatch.setattr(sys, "argv", ["update_reference_scores", str(tmp_path / "results"), "--suite", "all"])
    assert script.main() == 0
    card = yaml.safe_load(matched.read_text())
    assert card["reference_suite"] == "all" and list(card["reference_scores"]) == everything
    assert card["reference_scores"][everything[1]] == {"main": round(1 / 3, 6), "none": None}
    untouched = yaml.safe_load(unmatched.read_text())
    assert untouched["reference_suite"] == "quick" and untouched["reference_scores"] == {"old": {"acc1": 0.5}}


def test_a_card_missing_a_record_of_its_suite_is_left_unchanged(tmp_path, monkeypatch, capsys):
    script = load_script()
    card_path = write_card(tmp_path / "zoo" / "a", "a" * 64, "all")
    write_records(tmp_path / "results", "a" * 64, [b.name for b in resolve_suite("all")][:-1])
    before = card_path.read_text()
    monkeypatch.setattr(script, "list_zoo", lambda: [SimpleNamespace(name="a", folder=card_path.parent)])
    monkeypatch.setattr(sys, "argv", ["update_reference_scores", str(tmp_path / "results")])
    assert script.main() == 0
    assert card_path.read_text() == before and "card left unchanged" in capsys.readouterr().err
