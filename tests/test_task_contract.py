"""The task contract: every registered task declares it completely, every shipped benchmark satisfies its
task's contract, the contract is checked when a benchmark is loaded (before any model), and every task's
metrics come back exactly from its per-sample sidecar."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from conftest import evaluate_task
from silc_eval.cli import main
from silc_eval.core.contract import DIRECTIONS, SPLITS, Metric
from silc_eval.core.errors import UserError
from silc_eval.core.params import validate_params
from silc_eval.core.paths import benchmarks_dir
from silc_eval.core.records import read_samples, record_path, sidecar_path, write_samples
from silc_eval.data.formats import FORMATS
from silc_eval.registry import parse_benchmark
from silc_eval.tasks import TASKS

BENCHMARK_FILES = sorted((benchmarks_dir() / "definitions").glob("*.yaml"))
KINDS = {"classification", "retrieval", "segmentation", "caption_selection", "association"}


def same_metrics(a: dict, b: dict) -> bool:
    """Return whether two metric dicts hold the same names and exactly the same values (NaN equals NaN)."""
    def same(x, y):
        if x is None or y is None:
            return x is y
        return (math.isnan(x) and math.isnan(y)) or x == y

    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_declares_a_complete_contract(name):
    task = TASKS[name]
    assert task.name == name and isinstance(task.version, int) and task.version >= 1
    assert "eval" in task.splits and set(task.splits) <= set(SPLITS)
    assert task.formats and set(task.formats) <= set(FORMATS)
    assert task.data_kind in KINDS
    assert task.metrics and all(m.direction in DIRECTIONS for m in task.metrics)
    assert any(m.direction == "higher" for m in task.metrics)
    # the defaults satisfy their own declaration, and every parameter says what it expects
    assert validate_params(task.params, {}, name) == task.default_params
    assert all(param.expected for param in task.params.values())
    assert callable(task.evaluate) and callable(task.score)
    assert task.description


@pytest.mark.parametrize("path", BENCHMARK_FILES, ids=[p.stem for p in BENCHMARK_FILES])
def test_every_shipped_benchmark_satisfies_its_task_contract(path):
    benchmark = parse_benchmark(path)
    task = TASKS[benchmark.task]
    fmt = FORMATS[benchmark.dataset["format"]]
    assert benchmark.dataset["format"] in task.formats and fmt.kind(benchmark.dataset) == task.data_kind
    assert all(fmt.has_split(benchmark.dataset, split) for split in task.splits)
    assert set(benchmark.protocol()) == set(task.params)
    assert task.metric_of(benchmark.main_metric) is not None
    assert task.direction(benchmark.main_metric) == "higher"


def test_metric_patterns_match_whole_names_only():
    mean, std = Metric("acc1_{shot}_mean"), Metric("acc1_{shot}_std", "none")
    assert mean.matches("acc1_10shot_mean") and mean.matches("acc1_full_mean")
    assert not mean.matches("acc1_10shot_std") and not mean.matches("xacc1_full_mean")
    assert not mean.matches("acc1__mean") and std.matches("acc1_full_std")
    assert TASKS["linear_probe"].direction("acc1_25shot_std") == "none"
    assert TASKS["retrieval"].direction("text_retrieval_recall@5") == "higher"
    assert TASKS["zeroshot_segmentation"].direction("IoU.road") == "higher"
    assert TASKS["retrieval"].direction("acc1") is None
    with pytest.raises(ValueError, match="direction"):
        Metric("x", "up")


GOOD = {"name": "toy", "task": "zeroshot_classification", "group": "classification", "main_metric": "acc1",
        "dataset": {"name": "toy", "source": "data-root", "format": "imagefolder", "root": "toy/val",
                    "classnames": "toy/classnames.txt"}}


@pytest.mark.parametrize("change, message", [
    ({"params": {"batch_size": "big"}}, "parameter batch_size is 'big'; expected an integer >= 1"),
    ({"params": {"batch_size": -5}}, "parameter batch_size is -5; expected an integer >= 1"),
    ({"params": {"batch_size": True}}, "parameter batch_size is True"),
    ({"params": {"logit_scale": 0}}, "parameter logit_scale is 0; expected a number > 0"),
    ({"params": {"amp": "yes"}}, "parameter amp is 'yes'; expected true or false"),
    ({"params": {"temperature": 1}}, "unknown parameter 'temperature'"),
    ({"params": [1, 2]}, "params must be a mapping"),
    ({"main_metric": "mIoU"}, "main_metric 'mIoU' is not a metric of task zeroshot_classification"),
    ({"task": "linear_probe", "main_metric": "acc1_full_mean"}, "task linear_probe needs a train split"),
    ({"task": "retrieval", "main_metric": "image_retrieval_recall@1"},
     "task retrieval reads karpathy, coco_captions, clip_benchmark datasets, not imagefolder"),
    ({"task": "zeroshot_segmentation", "main_metric": "mIoU",
      "params": {"stride": 0}}, "task zeroshot_segmentation reads mmseg datasets"),
])
def test_the_contract_is_checked_when_a_benchmark_is_loaded(tmp_path, change, message):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **change}))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        parse_benchmark(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize("params, message", [
    ({"stride": 0}, "parameter stride is 0"), ({"variant": "fancy"}, "parameter variant is 'fancy'"),
    ({"prob_thd": 2}, "parameter prob_thd is 2"), ({"area_thd": "big"}, "parameter area_thd is 'big'"),
])
def test_segmentation_params_are_checked_too(tmp_path, params, message):
    body = {**GOOD, "task": "zeroshot_segmentation", "main_metric": "mIoU", "params": params,
            "dataset": {"name": "seg", "source": "data-root", "format": "mmseg", "images": "i", "annotations": "a",
                        "num_classes": 2, "classes": "c.txt"}}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(UserError, match=message):
        parse_benchmark(path)


def test_a_bad_benchmark_fails_before_any_model_is_loaded(tmp_path, monkeypatch, capsys):
    (tmp_path / "definitions").mkdir()
    (tmp_path / "suites").mkdir()
    (tmp_path / "definitions" / "toy.yaml").write_text(yaml.safe_dump({**GOOD, "params": {"batch_size": 0}}))
    monkeypatch.setenv("SILC_EVAL_BENCHMARKS", str(tmp_path))
    import silc_eval.models.loading as loading

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the benchmark was checked")

    monkeypatch.setattr(loading, "load_model", no_model)
    assert main(["run", "--benchmark", "toy", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parameter batch_size is 0" in err[0]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- per-sample sidecars

def roundtrip(tmp_path, samples):
    """Write samples as the sidecar of a record and read them back through the record's sha256."""
    record_file = record_path(tmp_path, "m", "b")
    record = {"samples": write_samples(record_file, samples)}
    assert sidecar_path(record_file).is_file()
    return read_samples(record_file, record)


MUTATED = {"zeroshot_classification": "top5", "retrieval": "image_hits", "linear_probe": "predictions"}


@pytest.mark.parametrize("task_name, fixture", [("zeroshot_classification", "tiny_classification_dir"),
                                                ("retrieval", "tiny_retrieval_dir"),
                                                ("linear_probe", "tiny_classification_dir")])
def test_metrics_recomputed_from_the_sidecar_equal_the_outcome(tmp_path, request, tiny_model, task_name, fixture):
    from silc_eval.data.formats import build_split

    data_dir = request.getfixturevalue(fixture)
    task = TASKS[task_name]
    if task_name == "linear_probe":
        declaration = {"name": "tiny", "source": "data-root", "format": "imagefolder", "root": "val",
                       "train_root": "val", "classnames": "classnames.txt", "templates": "templates.txt"}
        data = {split: build_split(declaration, data_dir.root, tiny_model.preprocess, split)
                for split in ("train", "eval")}
        params = task.protocol({"shots": ["full", 1, 2], "seeds": [0, 1], "epochs": 2}, "test")
    else:
        data = {"eval": data_dir.dataset(tiny_model.preprocess)}
        params = task.protocol({}, "test")
    outcome = task.evaluate(tiny_model, data, params, progress=False)
    samples = roundtrip(tmp_path, outcome.samples)
    assert same_metrics(task.score(samples, params), outcome.metrics)
    # the outcomes carry the information: changing one of them changes a metric
    changed = {k: v.copy() for k, v in samples.items()}
    key = MUTATED[task_name]
    changed[key] = ~changed[key] if changed[key].dtype == bool else np.roll(changed[key], 1, axis=-1)
    assert not same_metrics(task.score(changed, params), outcome.metrics)


def test_a_tampered_sidecar_is_refused(tmp_path):
    record_file = record_path(tmp_path, "m", "b")
    record = {"samples": write_samples(record_file, {"target": np.arange(4)})}
    sidecar_path(record_file).write_bytes(sidecar_path(record_file).read_bytes()[:-3] + b"xyz")
    with pytest.raises(UserError, match="does not match the sha256"):
        read_samples(record_file, record)


def test_object_arrays_never_reach_a_sidecar(tmp_path):
    with pytest.raises(ValueError, match="object array"):
        write_samples(record_path(tmp_path, "m", "b"), {"bad": np.array([{"a": 1}], dtype=object)})


def test_the_helper_used_by_other_tests_goes_through_the_contract(tiny_model, tiny_classification_dir):
    with pytest.raises(UserError, match="parameter batch_size"):
        evaluate_task(TASKS["zeroshot_classification"], tiny_model, tiny_classification_dir.dataset(), {"batch_size": 0})
