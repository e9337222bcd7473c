"""Benchmark and suite YAML: the shipped files load, and every malformed file is one clear UserError."""

from pathlib import Path

import pytest
import yaml

from silc_eval.core.errors import UserError
from silc_eval.registry import load_benchmarks, load_suites, resolve_benchmarks, resolve_suite
from silc_eval.tasks import TASKS

GOOD_BENCHMARK = {
    "name": "toy", "task": "zeroshot_classification", "group": "classification", "main_metric": "acc1",
    "dataset": {"name": "toy-val", "source": "data-root", "format": "imagefolder", "root": "toy/val",
                "classnames": "toy/classnames.txt"},
}


def write_tree(root: Path, benchmarks: dict, suites: dict) -> Path:
    (root / "definitions").mkdir(parents=True)
    (root / "suites").mkdir(parents=True)
    for name, body in benchmarks.items():
        (root / "definitions" / f"{name}.yaml").write_text(yaml.safe_dump(body))
    for name, body in suites.items():
        (root / "suites" / f"{name}.yaml").write_text(yaml.safe_dump(body))
    return root


def test_shipped_suites_resolve_in_declared_order():
    all_suite = resolve_suite("all")
    names = [b.name for b in all_suite]
    assert names[0] == "synthscenes-zeroshot" and names.index("synthscenes-retrieval") < names.index(
        "synthscenes-zeroshot-seg-vanilla")
    # every task but caption selection and association, which have no SynthScenes set yet (SugarCrepe, Winoground, WinoGAViL)
    assert {b.task for b in all_suite} == set(TASKS) - {"caption_selection", "association"}
    assert {"all", "quick"} <= set(load_suites())
    for benchmark in load_benchmarks().values():
        assert benchmark.task in TASKS
        assert set(benchmark.protocol()) == set(TASKS[benchmark.task].default_params)


def test_protocol_overlays_benchmark_params_on_task_defaults(tmp_path):
    body = dict(GOOD_BENCHMARK, params={"batch_size": 7})
    root = write_tree(tmp_path, {"toy": body}, {"s": {"name": "s", "benchmarks": ["toy"]}})
    (benchmark,) = resolve_suite("s", root)
    assert benchmark.protocol()["batch_size"] == 7
    assert benchmark.protocol()["logit_scale"] == TASKS["zeroshot_classification"].default_params["logit_scale"]


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.update(colour="red"), "unknown key 'colour'"),
    (lambda b: b.pop("main_metric"), "missing field 'main_metric'"),
    (lambda b: b.update(task="segmentation-magic"), "unknown task 'segmentation-magic'"),
    (lambda b: b["dataset"].update(format="parquet"), "dataset.format must be one of"),
    (lambda b: b["dataset"].pop("classnames"), "missing field 'classnames' in dataset"),
    (lambda b: b["dataset"].update(source="internet"), "dataset.source must be one of"),
    (lambda b: b.update(params={"batchsize": 3}), "unknown parameter 'batchsize'"),
    (lambda b: b.update(name="other"), "must equal the file name"),
])
def test_malformed_benchmark_is_one_line_error_naming_the_file(tmp_path, mutate, message):
    body = yaml.safe_load(yaml.safe_dump(GOOD_BENCHMARK))
    mutate(body)
    root = write_tree(tmp_path, {"toy": body}, {})
    with pytest.raises(UserError, match=message) as info:
        load_benchmarks(root)
    assert "toy.yaml" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("suite, message", [
    ({"name": "s", "benchmarks": ["toy"], "extra": 1}, "unknown key 'extra' in suite"),
    ({"name": "s"}, "missing field 'benchmarks'"),
    ({"name": "s", "benchmarks": ["missing-benchmark"]}, "unknown benchmark 'missing-benchmark'"),
    ({"name": "s", "benchmarks": []}, "non-empty list"),
])
def test_malformed_suite_is_one_line_error(tmp_path, suite, message):
    root = write_tree(tmp_path, {"toy": GOOD_BENCHMARK}, {"s": suite})
    with pytest.raises(UserError, match=message):
        load_suites(root)


def test_a_group_named_like_a_benchmark_is_one_line_error(tmp_path):
    clash = dict(GOOD_BENCHMARK, name="other", group="toy")
    root = write_tree(tmp_path, {"toy": GOOD_BENCHMARK, "other": clash}, {})
    with pytest.raises(UserError, match=r"other\.yaml: group 'toy' is also the name of a benchmark"):
        load_benchmarks(root)
    left_out = []
    assert list(load_benchmarks(root, on_error=left_out.append)) == ["toy"] and len(left_out) == 1


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError, match="expected one of .*quick"):
        resolve_suite("nonexistent")
    with pytest.raises(UserError, match="expected one of .*synthscenes-zeroshot"):
        resolve_benchmarks(["nonexistent"])


def test_a_malformed_benchmark_fails_only_what_needs_it(tmp_path):
    suites = {"s": {"name": "s", "benchmarks": ["toy"]}, "b": {"name": "b", "benchmarks": ["toy", "broken"]}}
    root = write_tree(tmp_path, {"toy": GOOD_BENCHMARK}, suites)
    (root / "definitions" / "broken.yaml").write_text("name: broken\ntask: [zeroshot_classification\n")
    assert [b.name for b in resolve_suite("s", root)] == ["toy"]
    assert [b.name for b in resolve_benchmarks(["toy"], root)] == ["toy"]
    assert set(load_suites(root)) == {"s", "b"}  # suites are checked against the defined names, not parsed files
    for call in (lambda: resolve_suite("b", root), lambda: resolve_benchmarks(["broken"], root),
                 lambda: load_benchmarks(root)):
        with pytest.raises(UserError, match=r"broken\.yaml: not valid YAML"):
            call()
    left_out = []
    assert list(load_benchmarks(root, on_error=left_out.append)) == ["toy"]
    assert len(left_out) == 1 and "broken.yaml" in str(left_out[0])


def test_list_names_a_malformed_file_in_one_warning_and_lists_the_rest(tmp_path, monkeypatch, capsys):
    from silc_eval.cli import main

    suites = {"s": {"name": "s", "benchmarks": ["toy"]}, "odd": {"name": "odd", "benchmarks": ["toy"], "x": 1}}
    root = write_tree(tmp_path, {"toy": GOOD_BENCHMARK}, suites)
    (root / "definitions" / "broken.yaml").write_text("name: broken\ntask: [zeroshot_classification\n")
    monkeypatch.setenv("SILC_EVAL_BENCHMARKS", str(root))
    assert main(["list", "benchmarks"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["toy"]
    assert len(err.splitlines()) == 1 and err.startswith("silc-eval: warning: ") and "broken.yaml" in err
    assert main(["list", "suites"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["s"]
    assert len(err.splitlines()) == 1 and "odd.yaml" in err and "unknown key 'x'" in err
