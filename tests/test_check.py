"""`silc-eval check`: regressions, improvements, missing entries, tolerances and bad reference files."""

import json
import math
from pathlib import Path

import pytest

from silc_eval.cli import main
from silc_eval.models.zoo import list_zoo, reference_scores
from silc_eval.report.check import Tolerances, classify, parse_tolerances
from silc_eval.report.published import load_published

SHA = "ab" * 32


def write_record(folder: Path, model: str, benchmark: str, metrics: dict, task: str = "zeroshot_classification",
                 group: str = "classification", sha256: str = SHA) -> Path:
    """Write a minimal result record of (model, benchmark) under folder/records; returns its path."""
    path = folder / "records" / model / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"schema": "silc-eval/result/v1",
              "model": {"name": model, "sha256": sha256, "source": model, "architecture": "test"},
              "benchmark": {"name": benchmark, "task": task, "group": group, "main_metric": next(iter(metrics))},
              "dataset": {"name": "d", "fingerprint": "f" * 16, "size": 10}, "protocol": {}, "metrics": metrics}
    path.write_text(json.dumps(record))
    return path


def write_csv(path: Path, rows: list[str], header: str = "model,benchmark,metric,value") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def results(tmp_path):
    """Two models: m1 on cls (acc1, acc5) and seg (mIoU, aAcc); m2 on cls."""
    folder = tmp_path / "run"
    write_record(folder, "m1", "cls", {"acc1": 0.500, "acc5": 0.800})
    write_record(folder, "m1", "seg", {"mIoU": 0.300, "aAcc": 0.700}, task="zeroshot_segmentation",
                 group="segmentation")
    write_record(folder, "m2", "cls", {"acc1": 0.400, "acc5": 0.700})
    return folder


REFERENCE_ROWS = ["m1,cls,acc1,0.500", "m1,cls,acc5,0.800", "m1,seg,mIoU,0.300", "m1,seg,aAcc,0.700",
                  "m2,cls,acc1,0.400", "m2,cls,acc5,0.700"]


def check(capsys, *argv):
    code = main(["check", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(out: str) -> list[list[str]]:
    """Return the cells of the table lines (header and summary excluded)."""
    lines = out.strip().splitlines()
    return [line.split() for line in lines[1:-1]] if len(lines) > 1 else []


def assert_one_line_error(code, err, *fragments):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("silc-eval: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_identical_results_pass(results, tmp_path, capsys):
    code, out, _ = check(capsys, results, "--reference", write_csv(tmp_path / "ref.csv", REFERENCE_ROWS))
    assert code == 0
    assert out.strip().splitlines() == [out.strip().splitlines()[-1]]  # nothing to list, only the verdict
    assert "check passed: 6 scores compared" in out and "6 within tolerance" in out


def test_planted_regression_fails_and_is_listed(results, tmp_path, capsys):
    write_record(results, "m1", "seg", {"mIoU": 0.290, "aAcc": 0.6985}, task="zeroshot_segmentation",
                 group="segmentation")
    code, out, _ = check(capsys, results, "--reference", write_csv(tmp_path / "ref.csv", REFERENCE_ROWS))
    assert code == 1
    assert table_rows(out) == [["REGRESSION", "m1", "seg", "mIoU", "30.00", "29.00", "-1.00", "0.30"]]
    assert "check FAILED" in out and "1 regressions" in out and "5 within tolerance" in out


def test_improvements_and_missing_entries_in_both_directions(results, tmp_path, capsys):
    write_record(results, "m2", "cls", {"acc1": 0.450, "acc5": 0.700, "mean_per_class_recall": 0.44})
    write_record(results, "m3", "cls", {"acc1": 0.1, "acc5": 0.2})
    reference = write_csv(tmp_path / "ref.csv", REFERENCE_ROWS + ["m1,ret,recall@1,0.2", "m1,ret,recall@5,0.4",
                                                                  "m4,cls,acc1,0.9", "m1,cls,acc10,0.95"])
    code, out, _ = check(capsys, results, "--reference", reference)
    assert code == 0  # nothing regressed
    rows = table_rows(out)
    assert rows[0] == ["improvement", "m2", "cls", "acc1", "40.00", "45.00", "+5.00", "0.30"]
    assert ["missing", "result", "m1", "cls", "acc10"] in [r[:5] for r in rows]
    assert ["missing", "result", "m1", "ret", "*", "2", "metrics"] in rows
    assert ["missing", "result", "m4", "*", "*", "1", "benchmark,", "1", "score"] in rows
    assert ["missing", "reference", "m2", "cls", "mean_per_class_recall"] in rows
    assert ["missing", "reference", "m3", "*", "*", "1", "benchmark,", "2", "scores"] in rows
    statuses = [" ".join(r[:2]) if r[0] == "missing" else r[0] for r in rows]
    assert statuses == sorted(statuses, key=["improvement", "missing result", "missing reference"].index)
    assert "missing: 3 results, 2 references" in out


@pytest.mark.parametrize("tolerances, expected_code", [
    ([], 1),                                            # 1 pp drops of mIoU and acc1 both fail at 0.3 pp
    (["0.011"], 0),                                     # a default wide enough for both
    (["1.1pp"], 0),                                     # the same in percentage points
    (["mIoU=0.02"], 1),                                 # mIoU passes, acc1 still fails
    (["mIoU=0.02", "acc*=2pp"], 0),                     # a glob over metric names
    (["*=0.02", "zeroshot_segmentation:*=0.001"], 1),   # a task scope; the last matching rule wins
    (["segmentation:mIoU=0.02", "cls:acc1=0.02"], 0),   # group and benchmark scopes
])
def test_per_metric_tolerances(results, tmp_path, capsys, tolerances, expected_code):
    write_record(results, "m1", "seg", {"mIoU": 0.290, "aAcc": 0.700}, task="zeroshot_segmentation",
                 group="segmentation")
    write_record(results, "m2", "cls", {"acc1": 0.390, "acc5": 0.700})
    argv = [results, "--reference", write_csv(tmp_path / "ref.csv", REFERENCE_ROWS)]
    for tolerance in tolerances:
        argv += ["--tolerance", tolerance]
    code, out, _ = check(capsys, *argv)
    assert code == expected_code, out


def test_tolerance_precedence_rule_then_reference_column_then_default():
    tolerances = parse_tolerances(["0.01", "acc1=0.2"])
    assert tolerances.for_score("b", "t", "g", "acc1", row_tolerance=0.05) == 0.2
    assert tolerances.for_score("b", "t", "g", "acc5", row_tolerance=0.05) == 0.05
    assert tolerances.for_score("b", "t", "g", "acc5", row_tolerance=None) == 0.01
    assert Tolerances().for_score("b", "t", "g", "acc5", None) == pytest.approx(0.003)
    assert parse_tolerances(["0.3pp"]).default == pytest.approx(0.003)
    assert parse_tolerances(["0.3%"]).default == pytest.approx(0.003)


def test_reference_file_tolerance_column_and_yaml(results, tmp_path, capsys):
    write_record(results, "m2", "cls", {"acc1": 0.390, "acc5": 0.700})
    rows = [r + ",0.02" if r.startswith("m2,cls,acc1") else r + "," for r in REFERENCE_ROWS]
    reference = write_csv(tmp_path / "ref.csv", rows, header="model,benchmark,metric,value,tolerance")
    assert check(capsys, results, "--reference", reference)[0] == 0
    yaml_rows = [dict(zip(("model", "benchmark", "metric", "value"), r.split(","))) for r in REFERENCE_ROWS]
    (tmp_path / "ref.yaml").write_text(json.dumps({"references": yaml_rows}))  # JSON is YAML
    code, out, _ = check(capsys, results, "--reference", tmp_path / "ref.yaml")
    assert code == 1 and "REGRESSION  m2" in out


def test_spread_metrics_and_nan(tmp_path, capsys):
    folder = tmp_path / "run"
    write_record(folder, "m", "probe", {"acc1_mean": 0.5, "acc1_std": 0.05, "hIoU": float("nan")},
                 task="linear_probe", group="few-shot")
    reference = write_csv(tmp_path / "ref.csv", ["m,probe,acc1_mean,0.5", "m,probe,acc1_std,0.01",
                                                 "m,probe,hIoU,nan"])
    code, out, _ = check(capsys, folder, "--reference", reference)
    assert code == 0 and table_rows(out) == [["changed", "m", "probe", "acc1_std", "1.00", "5.00", "+4.00", "0.30"]]
    assert classify("higher", 0.3, math.nan, 0.003) == "regression"
    assert classify("higher", math.nan, math.nan, 0.003) == "ok"
    assert classify("higher", 0.3, 0.3 - 0.003, 0.003) == "ok"
    assert classify("lower", 0.3, 0.2, 0.003) == "improvement" and classify("lower", 0.3, 0.4, 0.003) == "regression"
    assert classify("none", 0.3, 0.2, 0.003) == "changed"


def test_directions_come_from_the_records(tmp_path, capsys):
    # a v2 record declares its metrics' directions (from the task contract); check follows them, not names
    folder = tmp_path / "run"
    path = write_record(folder, "m", "b", {"acc1": 0.5, "error": 0.2, "spread": 0.1})
    record = json.loads(path.read_text())
    record.update(schema="silc-eval/result/v2",
                  metric_directions={"acc1": "higher", "error": "lower", "spread": "none"})
    path.write_text(json.dumps(record))
    reference = write_csv(tmp_path / "ref.csv", ["m,b,acc1,0.5", "m,b,error,0.3", "m,b,spread,0.2"])
    code, out, _ = check(capsys, folder, "--reference", reference)
    assert code == 0
    assert sorted(row[0] + ":" + row[3] for row in table_rows(out)) == ["changed:spread", "improvement:error"]


def test_zoo_cards_are_the_default_reference_matched_by_weights(tmp_path, capsys):
    entry = list_zoo()[0]
    benchmark, metrics = next(iter(reference_scores(entry).items()))
    sha256 = entry.card["weights"]["sha256"]
    folder = tmp_path / "run"
    write_record(folder, "renamed-copy", benchmark, dict(metrics), sha256=sha256)
    write_record(folder, entry.name, benchmark, dict(metrics), sha256="0" * 64)  # same name, other weights
    code, out, _ = check(capsys, folder)
    assert code == 0
    assert f"{len(metrics)} scores compared with the zoo cards' reference scores: {len(metrics)} within" in out
    rows = table_rows(out)
    assert ["missing", "reference", entry.name, "*", "*"] in [r[:5] for r in rows]  # its only record
    assert any("weights differ" in " ".join(r) for r in rows)

    first_metric = next(iter(metrics))
    write_record(folder, "renamed-copy", benchmark, {**metrics, first_metric: metrics[first_metric] - 0.05},
                 sha256=sha256)
    code, out, _ = check(capsys, folder)
    assert code == 1
    assert ["REGRESSION", "renamed-copy", "(as", f"{entry.name})", benchmark, first_metric] in \
        [r[:6] for r in table_rows(out)]


def test_published_numbers_with_match(tmp_path, capsys):
    entry = load_published()[0]
    benchmark, metrics = next(iter(entry.scores.items()))
    metric, value = next(iter(metrics.items()))
    folder = tmp_path / "run"
    write_record(folder, "mine", benchmark, {metric: value / 100 - 0.01})
    code, out, _ = check(capsys, folder, "--published", "--match", f"mine={entry.label}")
    assert code == 1 and "REGRESSION" in out and "the published numbers" in out
    code, out, _ = check(capsys, folder, "--published", "--match", f"mine={entry.label}", "--tolerance", "1.5pp")
    assert code == 0
    code, out, _ = check(capsys, folder, "--published")  # without --match nothing lines up
    assert code == 0 and "0 scores compared" in out


@pytest.mark.parametrize("content, suffix, fragments", [
    ("model,benchmark,metric,value,comment\nm1,cls,acc1,0.5,x\n", ".csv",
     ["ref.csv", "unknown column 'comment'", "allowed columns: model, benchmark, metric, value, tolerance"]),
    ("model,benchmark,value\nm1,cls,0.5\n", ".csv", ["ref.csv", "missing column 'metric'"]),
    ("model,benchmark,metric,value\nm1,cls,acc1,50.0\n", ".csv", ["line 2", "outside [0, 1]", "50.0pp"]),
    ("model,benchmark,metric,value\nm1,cls,acc1,high\n", ".csv", ["line 2", "'high' is not a number"]),
    ("model,benchmark,metric,value\nm1,cls,acc1,0.5\nm1,cls,acc1,0.6\n", ".csv", ["(m1, cls, acc1) is listed twice"]),
    ("- {model: m1, benchmark: cls, metric: acc1, value: 0.5, seed: 1}\n", ".yaml", ["unknown column 'seed'"]),
    ("m1: {cls: {acc1: 0.5}}\n", ".yaml", ["expected a list of mappings"]),
    ("model,benchmark,metric,value\n", ".json", ["unknown reference file type '.json'"]),
])
def test_bad_reference_file_is_one_line_exit_2(results, tmp_path, capsys, content, suffix, fragments):
    path = tmp_path / f"ref{suffix}"
    path.write_text(content)
    assert_one_line_error(*check(capsys, results, "--reference", path)[::2], *fragments)


def test_other_user_mistakes_are_one_line_exit_2(results, tmp_path, capsys):
    assert_one_line_error(*check(capsys, results, "--reference", tmp_path / "nope.csv")[::2],
                          "reference file not found")
    assert_one_line_error(*check(capsys, tmp_path / "nowhere")[::2], "not found")
    assert_one_line_error(*check(capsys, results, "--tolerance", "3")[::2], "outside [0, 1]")
    assert_one_line_error(*check(capsys, results, "--tolerance", "mIoU=")[::2], "--tolerance mIoU=")
    assert_one_line_error(*check(capsys, results, "--tolerance", ":mIoU=0.1")[::2], "[SCOPE:]METRIC=VALUE")
    assert_one_line_error(*check(capsys, results, "--match", "m1")[::2], "RECORD_MODEL=REFERENCE_MODEL")
    assert_one_line_error(*check(capsys, results, "--published", "--reference", tmp_path / "x.csv")[::2],
                          "not allowed with argument")


def test_a_malformed_record_is_named_and_skipped_or_fails_with_strict(results, tmp_path, capsys):
    (results / "records" / "m1" / "broken.json").write_text("{")
    reference = write_csv(tmp_path / "ref.csv", REFERENCE_ROWS)
    code, out, err = check(capsys, results, "--reference", reference)
    assert code == 0 and "broken.json" in err and "6 within tolerance" in out
    assert_one_line_error(*check(capsys, results, "--reference", reference, "--strict")[::2], "broken.json")


def test_match_lines_up_a_record_with_a_zoo_model_whatever_its_weights(tmp_path, capsys):
    entry = list_zoo()[0]
    benchmark, metrics = next(iter(reference_scores(entry).items()))
    folder = tmp_path / "run"
    write_record(folder, "my-retrain", benchmark, dict(metrics), sha256="1" * 64)
    code, out, _ = check(capsys, folder, "--match", f"my-retrain={entry.name}")
    assert code == 0
    assert f"{len(metrics)} scores compared with the zoo cards' reference scores: {len(metrics)} within" in out
