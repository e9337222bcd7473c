"""Resumable runs: a rerun keeps records whose inputs are unchanged and recomputes the rest."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import build_tiny_model_dir
from silc_eval.cli import main
from silc_eval.evaluate.runner import RunConfig, run
from silc_eval.registry import resolve_benchmarks
from silc_eval.tasks import TASKS

FAST = ["synthscenes-zeroshot", "synthscenes-retrieval"]
KILLED = FAST + ["synthscenes-zeroshot-seg-vanilla"]  # long enough that a kill lands mid-run
KILL_DEADLINE_S = 600  # a safety net for a hung child, not a timing assertion


@pytest.fixture
def evaluations(monkeypatch):
    """Count the task evaluations of the test, by task name."""
    counts = Counter()
    for name, task in list(TASKS.items()):
        def counted(*args, _name=name, _evaluate=task.evaluate, **kwargs):
            counts[_name] += 1
            return _evaluate(*args, **kwargs)

        monkeypatch.setitem(TASKS, name, replace(task, evaluate=counted))
    return counts


def run_cli(output: Path, model_dir: Path, benchmarks=FAST, *extra: str) -> int:
    argv = ["run", "--model", f"local-dir:{model_dir}", "--output", str(output), "--no-progress", *extra]
    for benchmark in benchmarks:
        argv += ["--benchmark", benchmark]
    return main(argv)


def record_file(output: Path, model_dir: Path, benchmark: str) -> Path:
    return output / "records" / model_dir.name / f"{benchmark}.json"


def snapshot(output: Path) -> dict[str, tuple[bytes, int]]:
    """Return {record or sidecar path: (bytes, mtime_ns)} of every file under output/records."""
    return {str(p.relative_to(output)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted((output / "records").glob("*/*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model_dir):
    """A finished run of the tiny model on the two fast benchmarks (copy it before changing it)."""
    output = tmp_path_factory.mktemp("first") / "out"
    assert run_cli(output, tiny_model_dir) == 0
    return output


@pytest.fixture
def rerun_dir(first_run, tmp_path):
    """A private copy of the first run's output folder."""
    return Path(shutil.copytree(first_run, tmp_path / "out"))


def edit_record(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def test_rerun_skips_every_unchanged_record(rerun_dir, tiny_model_dir, evaluations, capsys):
    before = snapshot(rerun_dir)
    assert len(before) == 2 * len(FAST)  # a record and its per-sample sidecar each
    assert run_cli(rerun_dir, tiny_model_dir) == 0
    assert sum(evaluations.values()) == 0
    assert snapshot(rerun_dir) == before  # same bytes, not even rewritten
    err = capsys.readouterr().err
    assert f"keeping {len(FAST)} of {len(FAST)} records" in err
    assert "recompute" not in err.replace("--force recomputes", "")
    assert (rerun_dir / "leaderboard.csv").is_file()


def test_force_recomputes_everything(rerun_dir, tiny_model_dir, evaluations, capsys):
    assert run_cli(rerun_dir, tiny_model_dir, FAST, "--force") == 0
    assert evaluations == Counter({"zeroshot_classification": 1, "retrieval": 1})
    assert "resuming" not in capsys.readouterr().err


@pytest.mark.parametrize("change, reason", [
    (lambda r: r["benchmark"].update(task_version=0), "task zeroshot_classification version 0 -> 1"),
    (lambda r: r.update(schema="silc-eval/result/v1"), "record schema v1 (written before per-task versions"),
    (lambda r: r["samples"].update(sha256="0" * 64), "per-sample sidecar synthscenes-zeroshot.samples.npz does not match"),
    (lambda r: r["dataset"].update(fingerprint="0123456789abcdef"), "dataset changed (fingerprint)"),
    (lambda r: r["protocol"].update(logit_scale=7.0), "protocol changed (logit_scale: 7.0 -> 100.0)"),
    (lambda r: r["model"].update(sha256="0" * 64), "model weights changed (sha256)"),
    (lambda r: r["benchmark"].update(main_metric="acc5"), "benchmark definition changed"),
    (lambda r: r["provenance"]["packages"].update(open_clip_torch="0.0.1"), "open_clip_torch 0.0.1 -> "),
])
def test_a_changed_input_recomputes_that_record_only(rerun_dir, tiny_model_dir, evaluations, capsys, change, reason):
    changed = record_file(rerun_dir, tiny_model_dir, "synthscenes-zeroshot")
    untouched = record_file(rerun_dir, tiny_model_dir, "synthscenes-retrieval")
    edit_record(changed, change)
    untouched_before = (untouched.read_bytes(), untouched.stat().st_mtime_ns)
    assert run_cli(rerun_dir, tiny_model_dir) == 0
    assert evaluations == Counter({"zeroshot_classification": 1})
    assert (untouched.read_bytes(), untouched.stat().st_mtime_ns) == untouched_before
    err = capsys.readouterr().err
    assert "keeping 1 of 2 records" in err
    assert f"recompute  {tiny_model_dir.name} / synthscenes-zeroshot: {reason}" in err
    fresh = json.loads(changed.read_text())
    assert fresh["benchmark"]["task_version"] == 1 and fresh["schema"] == "silc-eval/result/v2"
    assert fresh["protocol"]["logit_scale"] == 100.0
    assert fresh["benchmark"]["main_metric"] == "acc1"


def test_a_new_version_of_one_task_recomputes_its_records_only(rerun_dir, tiny_model_dir, evaluations, monkeypatch,
                                                               capsys):
    # the silc-eval version alone no longer invalidates a record; a task's own version does
    zeroshot = record_file(rerun_dir, tiny_model_dir, "synthscenes-zeroshot")
    edit_record(zeroshot, lambda r: r["provenance"].update(silc_eval_version="0.0.1"))
    version = TASKS["retrieval"].version
    monkeypatch.setitem(TASKS, "retrieval", replace(TASKS["retrieval"], version=version + 1))
    assert run_cli(rerun_dir, tiny_model_dir) == 0
    assert evaluations == Counter({"retrieval": 1})
    err = capsys.readouterr().err
    assert "keeping 1 of 2 records" in err and f"task retrieval version {version} -> {version + 1}" in err
    assert json.loads(zeroshot.read_text())["provenance"]["silc_eval_version"] == "0.0.1"  # kept, not rewritten
    assert json.loads(record_file(rerun_dir, tiny_model_dir, "synthscenes-retrieval").read_text())[
        "benchmark"]["task_version"] == version + 1


def test_a_missing_sidecar_recomputes_its_record(rerun_dir, tiny_model_dir, evaluations, capsys):
    (rerun_dir / "records" / tiny_model_dir.name / "synthscenes-retrieval.samples.npz").unlink()
    assert run_cli(rerun_dir, tiny_model_dir) == 0
    assert evaluations == Counter({"retrieval": 1})
    assert "synthscenes-retrieval: per-sample sidecar synthscenes-retrieval.samples.npz is missing" in \
        capsys.readouterr().err


def test_a_changed_protocol_parameter_recomputes(rerun_dir, tiny_model_dir, evaluations, capsys):
    benchmarks = resolve_benchmarks(FAST)
    benchmarks[1] = replace(benchmarks[1], params={**benchmarks[1].params, "batch_size": 5})
    run(RunConfig(benchmarks=benchmarks, models=[f"local-dir:{tiny_model_dir}"], output=rerun_dir, progress=False))
    assert evaluations == Counter({"retrieval": 1})
    assert "protocol changed (batch_size: " in capsys.readouterr().err
    assert json.loads(record_file(rerun_dir, tiny_model_dir, FAST[1]).read_text())["protocol"]["batch_size"] == 5


def test_other_weights_under_the_same_name_recompute(rerun_dir, tiny_model_dir, tmp_path, evaluations, capsys):
    other = build_tiny_model_dir(tmp_path / "other" / tiny_model_dir.name, seed=7)
    assert run_cli(rerun_dir, other) == 0
    assert evaluations == Counter({"zeroshot_classification": 1, "retrieval": 1})
    assert capsys.readouterr().err.count("model weights changed (sha256)") == 2


@pytest.mark.parametrize("content, reason", [
    ("{\"schema\": \"silc-eval/result/v1\", \"metr", "unusable record (not valid JSON"),
    ("[1, 2, 3]", "unusable record (not a silc-eval result record"),
    (None, "foreign record (of "),
])
def test_a_malformed_or_foreign_record_is_recomputed(rerun_dir, tiny_model_dir, evaluations, capsys, content,
                                                     reason):
    path = record_file(rerun_dir, tiny_model_dir, "synthscenes-zeroshot")
    if content is None:  # the retrieval record copied over the zero-shot one
        content = record_file(rerun_dir, tiny_model_dir, "synthscenes-retrieval").read_text()
    path.write_text(content)
    assert run_cli(rerun_dir, tiny_model_dir) == 0
    assert evaluations == Counter({"zeroshot_classification": 1})
    assert f"synthscenes-zeroshot: {reason}" in capsys.readouterr().err
    assert json.loads(path.read_text())["benchmark"]["name"] == "synthscenes-zeroshot"


def start_run(output: Path, model_dir: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "silc_eval", "run", "--model", f"local-dir:{model_dir}", "--output", str(output),
            "--no-progress"]
    for benchmark in KILLED:
        argv += ["--benchmark", benchmark]
    return subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_killed_run_resumes_to_the_results_of_an_uninterrupted_one(tmp_path, tiny_model_dir, evaluations, capsys):
    killed = tmp_path / "killed"
    child = start_run(killed, tiny_model_dir)
    deadline = time.monotonic() + KILL_DEADLINE_S
    while not list((killed / "records").glob("*/*.json")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    survivors = sorted((killed / "records").glob("*/*.json"))
    assert survivors, child.stderr.read().decode()[-2000:]
    for path in survivors:  # whatever the kill interrupted, every visible record is whole
        record = json.loads(path.read_text())
        assert record["schema"] == "silc-eval/result/v2"
        assert (path.parent / record["samples"]["file"]).is_file()  # written before the record that names it
    for path in killed.iterdir():
        if path.suffix == ".csv":
            assert path.read_text().endswith("\n")

    assert run_cli(killed, tiny_model_dir, KILLED) == 0
    assert sum(evaluations.values()) == len(KILLED) - len(survivors)
    assert f"keeping {len(survivors)} of {len(KILLED)} records" in capsys.readouterr().err

    whole = tmp_path / "whole"
    assert run_cli(whole, tiny_model_dir, KILLED) == 0
    for benchmark in KILLED:
        resumed = json.loads(record_file(killed, tiny_model_dir, benchmark).read_text())
        uninterrupted = json.loads(record_file(whole, tiny_model_dir, benchmark).read_text())
        for key in ("model", "benchmark", "dataset", "protocol", "metrics"):
            assert resumed[key] == uninterrupted[key], (benchmark, key)
    assert (killed / "results.csv").read_text() == (whole / "results.csv").read_text()


def test_a_changed_dataset_declaration_is_a_changed_input():
    from silc_eval import __version__
    from silc_eval.evaluate.resume import as_json, changed_inputs

    (benchmark,) = resolve_benchmarks(["synthscenes-linear-probe"])
    record = {"model": {"sha256": "a" * 64}, "provenance": {"silc_eval_version": __version__},
              "protocol": as_json(benchmark.protocol()), "dataset": {"declaration": as_json(benchmark.dataset)},
              "benchmark": {"task": benchmark.task, "group": benchmark.group, "main_metric": benchmark.main_metric,
                            "task_version": TASKS[benchmark.task].version}}
    assert changed_inputs(record, "a" * 64, benchmark) == []
    moved = replace(benchmark, dataset={**benchmark.dataset, "train_root": "elsewhere/train"})
    assert changed_inputs(record, "a" * 64, moved) == ["dataset declaration changed (e.g. its training split)"]


def test_packaged_class_names_and_templates_are_part_of_the_record_fingerprint(tiny_classification_dir, monkeypatch):
    # clip-benchmark's packaged templates live in the package, not under the data root: a new package version
    # that changes them (CLIP_benchmark #109) must change the record's dataset identity.
    from silc_eval.data import metadata
    from silc_eval.data.readers import ImageFolderClassification
    from silc_eval.evaluate.api import splits_fingerprint

    def dataset():
        templates = metadata.load_names("templates", "clip_benchmark:cifar10", tiny_classification_dir.root)
        return ImageFolderClassification(tiny_classification_dir.image_root, tiny_classification_dir.classnames,
                                         templates)

    before = dataset()
    packaged = metadata._packaged
    monkeypatch.setattr(metadata, "_packaged", lambda kind, name: packaged(kind, name)[:-1] + ["a blurry {c}."])
    after = dataset()
    assert before.fingerprint == after.fingerprint  # the same files
    assert splits_fingerprint({"eval": before}) != splits_fingerprint({"eval": after})
    renamed = dataset()
    renamed.classes = renamed.classes[:-1] + ["another name"]
    assert splits_fingerprint({"eval": renamed}) != splits_fingerprint({"eval": after})
    assert splits_fingerprint({"eval": after}) == splits_fingerprint({"eval": dataset()})


def test_identity_packages_are_the_data_builder_and_the_model_library():
    from silc_eval.evaluate.resume import identity_packages

    zeroshot = resolve_benchmarks(["synthscenes-zeroshot"])[0]
    cifar = resolve_benchmarks(["cifar10-zeroshot"])[0]  # read through clip-benchmark's builder
    assert identity_packages("zoo", zeroshot) == ("open_clip_torch",)
    assert identity_packages("hf", zeroshot) == ("transformers",)
    assert identity_packages("local-dir", cifar) == ("clip-benchmark", "open_clip_torch")
