"""Users' mistakes: one line on stderr, exit code 2, no traceback, no files left behind."""

import shutil
import subprocess
import sys
from pathlib import Path

from silc_eval.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    """Exit code 2 and exactly one non-progress line on stderr (tqdm bars of data generation may precede it)."""
    assert code == 2
    lines = [line for line in err.replace("\r", "\n").strip().splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("silc-eval: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_unknown_suite_benchmark_and_model(capsys, tmp_path):
    assert_one_line_error(*run_cli(capsys, "run", "--suite", "nope", "--output", str(tmp_path / "o"))[::2],
                          "unknown suite 'nope'", "quick")
    assert_one_line_error(*run_cli(capsys, "run", "--benchmark", "nope", "--output", str(tmp_path / "o"))[::2],
                          "unknown benchmark 'nope'", "synthscenes-zeroshot")
    assert_one_line_error(*run_cli(capsys, "run", "--suite", "quick", "--model", "no-such-model",
                                   "--output", str(tmp_path / "o"))[::2], "unknown model 'no-such-model'")
    assert not (tmp_path / "o").exists()


def test_missing_checkpoint_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--suite", "quick", "--model", f"ViT-B-32:{tmp_path / 'missing.pt'}",
                           "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "checkpoint file not found", "missing.pt")
    assert not (tmp_path / "o").exists()


def test_truncated_checkpoint(capsys, tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = run_cli(capsys, "run", "--suite", "quick", "--model", f"local-dir:{broken}",
                           "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "could not be loaded", "open_clip_model.safetensors")
    assert not (tmp_path / "o").exists()


def test_checkpoint_of_another_architecture(capsys, tmp_path, tiny_model_dir):
    code, _, err = run_cli(capsys, "run", "--suite", "quick", "--model",
                           f"RN50:{tiny_model_dir / 'open_clip_model.safetensors'}", "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "could not be loaded as RN50")


def test_local_dir_without_config(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "run", "--suite", "quick", "--model", f"local-dir:{tmp_path / 'empty'}",
                           "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "open_clip_config.json")


def test_data_root_without_layout_names_the_expected_paths(capsys, tmp_path, tiny_model_dir):
    code, _, err = run_cli(capsys, "run", "--benchmark", "imagenet1k-zeroshot", "--data-root", str(tmp_path),
                           "--model", f"local-dir:{tiny_model_dir}", "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "imagenet1k-val", str(tmp_path / "imagenet" / "val"))
    assert not (tmp_path / "o").exists()


def test_malformed_suite_yaml(capsys, tmp_path, monkeypatch):
    root = tmp_path / "benchmarks"
    shutil.copytree(Path(__file__).resolve().parents[1] / "benchmarks", root,
                    ignore=shutil.ignore_patterns("perf"))
    (root / "suites" / "quick.yaml").write_text("name: quick\nbenchmarks: [synthscenes-zeroshot]\ncolour: red\n")
    monkeypatch.setenv("SILC_EVAL_BENCHMARKS", str(root))
    code, _, err = run_cli(capsys, "run", "--suite", "quick", "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "quick.yaml", "unknown key 'colour'")
    (root / "suites" / "quick.yaml").write_text("name: quick\n")
    code, _, err = run_cli(capsys, "run", "--suite", "quick", "--output", str(tmp_path / "o"))
    assert_one_line_error(code, err, "quick.yaml", "missing field 'benchmarks'")


def test_console_script_exit_code_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "silc_eval", "run", "--suite", "nope"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_data_synthscenes_writes_where_asked_and_is_read_back(capsys, tmp_path):
    code = main(["data", "synthscenes", "--out", str(tmp_path / "world"), "--parts", "retrieval", "--workers", "1"])
    assert code == 0
    root = tmp_path / "world" / "synthscenes"
    assert (root / "retrieval" / "manifest.json").is_file() and (root / "world.json").is_file()
    from silc_eval.data.readers import KarpathyRetrieval

    dataset = KarpathyRetrieval(root / "retrieval" / "dataset_synthscenes.json", root / "retrieval")
    assert len(dataset) == 1000 and all(len(c) == 5 for c in dataset.captions)
    assert_one_line_error(*run_cli(capsys, "data", "synthscenes", "--out", str(tmp_path / "w2"), "--parts", "nope")[::2],
                          "unknown SynthScenes part 'nope'")


def test_precision_choices_are_the_loaders_precisions():
    # cli.py keeps its imports light, so it spells the choices out; they must stay those the loader accepts
    from silc_eval.cli import build_parser
    from silc_eval.models.loading import PRECISIONS

    run = next(action for action in build_parser()._subparsers._group_actions[0].choices["run"]._actions
               if action.dest == "precision")
    assert tuple(run.choices) == PRECISIONS
