"""--limit N: a smoke run on the first N samples; its records say so, and resume never keeps them as full results
(nor a full record for a smoke run)."""

from __future__ import annotations

import json

from conftest import assert_fails_cleanly
from silc_eval.cli import main
from silc_eval.evaluate.limit import FirstSamples

BENCHMARKS = ["synthscenes-zeroshot", "synthscenes-retrieval"]


def run_cli(output, model_dir, *extra):
    argv = ["run", "--model", f"local-dir:{model_dir}", "--output", str(output), "--no-progress", *extra]
    for benchmark in BENCHMARKS:
        argv += ["--benchmark", benchmark]
    return main(argv)


def test_first_samples_cut_items_and_per_sample_lists(tiny_classification_dir):
    dataset = tiny_classification_dir.dataset()
    first = FirstSamples(dataset, 5)
    assert len(first) == 5 and first.targets == dataset.targets[:5] and first.classes == dataset.classes
    assert first[4][1] == dataset[4][1] and first.fingerprint != dataset.fingerprint
    assert len(FirstSamples(dataset, 10_000)) == len(dataset)
    try:
        first[5]
    except IndexError:
        pass
    else:
        raise AssertionError("index 5 of the first 5 samples must raise IndexError")


def test_limited_records_say_so_and_are_never_kept_as_full_results(tmp_path, tiny_model_dir, capsys):
    output = tmp_path / "out"
    assert run_cli(output, tiny_model_dir, "--limit", "7") == 0
    record = json.loads((output / "records" / tiny_model_dir.name / "synthscenes-zeroshot.json").read_text())
    assert record["limit"] == 7 and record["dataset"]["size"] == 7
    retrieval = json.loads((output / "records" / tiny_model_dir.name / "synthscenes-retrieval.json").read_text())
    assert retrieval["dataset"]["size"] == 7
    capsys.readouterr()
    assert run_cli(output, tiny_model_dir, "--limit", "7") == 0  # the same smoke run: kept
    assert "keeping 2 of 2 records" in capsys.readouterr().err
    assert run_cli(output, tiny_model_dir) == 0  # a full run: both recomputed
    err = capsys.readouterr().err
    assert "record of the first 7 samples, this run evaluates all samples" in err
    full = json.loads((output / "records" / tiny_model_dir.name / "synthscenes-zeroshot.json").read_text())
    assert "limit" not in full and full["dataset"]["size"] > 7
    assert run_cli(output, tiny_model_dir, "--limit", "3") == 0  # a smoke run never reuses the full records
    assert "record of all samples, this run evaluates the first 3" in capsys.readouterr().err


def test_a_bad_limit_is_one_line(tmp_path, tiny_model_dir, capsys):
    assert_fails_cleanly(capsys, ["run", "--model", f"local-dir:{tiny_model_dir}", "--limit", "0", "--output",
                                  str(tmp_path / "o")], r"--limit: expected a whole number >= 1, got '0'",
                         watch=[tmp_path])
