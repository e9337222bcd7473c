"""A suite run skips benchmarks whose real data is missing and says so in one block; an explicit one errors."""

import json
import shutil
from pathlib import Path

import pytest

from silc_eval.cli import main

PRESENT = """name: mini-present
task: zeroshot_classification
group: classification
main_metric: acc1
dataset:
  name: mini-present-val
  source: data-root
  format: imagefolder
  root: tiny/val
  classnames: tiny/classnames.txt
  templates: tiny/templates.txt
"""
MISSING = """name: mini-missing
task: retrieval
group: retrieval
main_metric: image_retrieval_recall@1
dataset:
  name: coco-karpathy-test
  source: data-root
  format: karpathy
  annotations: coco/dataset_coco.json
  images: coco
  split: test
"""


@pytest.fixture
def catalogue(tmp_path, monkeypatch, tiny_classification_dir):
    """A benchmarks folder with one benchmark whose data is present and one whose data is not."""
    root = tmp_path / "benchmarks"
    (root / "definitions").mkdir(parents=True)
    (root / "suites").mkdir()
    (root / "definitions" / "mini-present.yaml").write_text(PRESENT)
    (root / "definitions" / "mini-missing.yaml").write_text(MISSING)
    (root / "suites" / "mini.yaml").write_text("name: mini\nbenchmarks: [mini-missing, mini-present]\n")
    (root / "suites" / "nothing.yaml").write_text("name: nothing\nbenchmarks: [mini-missing]\n")
    monkeypatch.setenv("SILC_EVAL_BENCHMARKS", str(root))
    data = tmp_path / "data"
    shutil.copytree(tiny_classification_dir.root, data / "tiny")
    return data


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]


def test_suite_runs_what_is_present_and_lists_the_skipped(capsys, tmp_path, catalogue, tiny_model_dir):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "run", "--suite", "mini", "--data-root", catalogue, "--model",
                                f"local-dir:{tiny_model_dir}", "--output", out, "--no-progress")
    assert code == 0, err
    lines = error_lines(err)
    header = [i for i, line in enumerate(lines) if "skipping" in line]
    assert len(header) == 1, err
    block = lines[header[0]:header[0] + 3]
    assert block[0] == (f"silc-eval: suite mini: skipping 1 of 2 benchmarks, their data is not found "
                        f"under {catalogue}:")
    assert block[1].split() == ["mini-missing", "missing", str(catalogue / "coco" / "dataset_coco.json")]
    assert block[2].split() == ["missing", str(catalogue / "coco")]
    records = sorted(p.name for p in (out / "records").glob("*/*.json"))
    assert records == ["mini-present.json"]
    record = json.loads(next((out / "records").glob("*/mini-present.json")).read_text())
    assert record["dataset"]["size"] == 24
    assert "mini-missing" not in (out / "leaderboard.md").read_text()
    assert "mini-present" in stdout


def test_explicit_benchmark_with_missing_data_is_one_line(capsys, tmp_path, catalogue, tiny_model_dir):
    code, _, err = run_cli(capsys, "run", "--benchmark", "mini-missing", "--data-root", catalogue, "--model",
                           f"local-dir:{tiny_model_dir}", "--output", tmp_path / "out")
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("silc-eval: error: "), err
    assert str(catalogue / "coco" / "dataset_coco.json") in lines[0]
    assert not (tmp_path / "out").exists()


def test_suite_with_nothing_runnable_is_one_line_naming_the_paths(capsys, tmp_path, catalogue, tiny_model_dir):
    code, _, err = run_cli(capsys, "run", "--suite", "nothing", "--data-root", catalogue, "--model",
                           f"local-dir:{tiny_model_dir}", "--output", tmp_path / "out")
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "suite nothing has no benchmark whose data is present" in lines[0]
    assert f"mini-missing: {catalogue / 'coco' / 'dataset_coco.json'}, {catalogue / 'coco'}" in lines[0]
    assert not (tmp_path / "out").exists()


def test_suite_without_data_root_asks_for_it(capsys, tmp_path, catalogue, tiny_model_dir):
    code, _, err = run_cli(capsys, "run", "--suite", "mini", "--model", f"local-dir:{tiny_model_dir}",
                           "--output", tmp_path / "out")
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "pass --data-root DIR" in lines[0] and "<data-root>/tiny/val" in lines[0]


def test_real_suites_name_only_declared_benchmarks():
    from silc_eval.registry import load_suites

    suites = load_suites(Path(__file__).resolve().parents[1] / "benchmarks")
    assert {"paper-silc", "paper-sfclip", "imagenet", "retrieval"} <= set(suites)
    assert suites["retrieval"].benchmarks == ("coco5k-retrieval", "flickr30k-retrieval")
    assert "imagenet1k-zeroshot" in suites["paper-silc"].benchmarks
    assert sum(name.endswith("-zeroshot-seg") for name in suites["paper-silc"].benchmarks) == 8
