"""DataComp's 38-task suite: its main metrics and groups (pinned to its tasklist.yml and aggregate_scores.py),
the WILDS-style metrics against scikit-learn and a per-group reference, webdataset metadata, and the report's
partial-mean mark."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from conftest import TINY_CLASSNAMES, TINY_TEMPLATES, _noisy_image, build_tiny_model_dir
from silc_eval.core.errors import UserError
from silc_eval.data.wds import WdsClassification
from silc_eval.evaluate.limit import FirstSamples
from silc_eval.registry import resolve_suite
from silc_eval.tasks import TASKS, zeroshot_classification

# DataComp's tasklist.yml: the sets whose main metric is not top-1 accuracy.
NOT_ACC1 = {"datacomp-caltech101": "mean_per_class_recall", "datacomp-fgvc-aircraft": "mean_per_class_recall",
            "datacomp-flowers": "mean_per_class_recall", "datacomp-pets": "mean_per_class_recall",
            "datacomp-iwildcam": "f1_macro", "datacomp-fmow": "acc1_worst_group",
            "datacomp-dollar-street": "acc5_worst_group", "datacomp-geode": "acc1_worst_group",
            "datacomp-flickr30k": "mean_recall@1", "datacomp-mscoco": "mean_recall@1",
            "datacomp-winogavil": "jaccard_score_10-12"}
# aggregate_scores.py's groups.
GROUPS = {"DataComp: ImageNet": 1, "DataComp: ImageNet dist. shifts": 6, "DataComp: VTAB": 13,
          "DataComp: retrieval": 3, "DataComp: others": 15}


def test_the_suite_has_datacomps_main_metrics_and_groups():
    suite = resolve_suite("datacomp38")
    assert len(suite) == 38 and len({b.name for b in suite}) == 38
    for benchmark in suite:
        assert benchmark.main_metric == NOT_ACC1.get(benchmark.name, "acc1"), benchmark.name
    counts = {}
    for benchmark in suite:
        counts[benchmark.group] = counts.get(benchmark.group, 0) + 1
    assert counts == GROUPS
    by_name = {b.name: b for b in suite}
    assert by_name["datacomp-iwildcam"].protocol()["f1_macro"] is True
    assert by_name["datacomp-fmow"].protocol()["group_column"] == 0
    assert by_name["datacomp-caltech101"].dataset["root"] == "datacomp/wds_vtab-caltech101_test"
    assert by_name["datacomp-geode"].dataset["root"] == "datacomp/wds_geode_test"


def test_f1_macro_is_scikit_learns_over_the_classes_present():
    rng = np.random.default_rng(0)
    for _ in range(20):
        targets = rng.choice([0, 2, 3, 5], size=60)  # classes 1 and 4 never occur but can be predicted
        predictions = np.where(rng.random(60) < 0.5, targets, rng.integers(0, 6, size=60))
        expected = f1_score(targets, predictions, average="macro", labels=np.unique(targets))
        assert zeroshot_classification.f1_macro(predictions, targets) == pytest.approx(expected, abs=1e-12)


def _samples(rng, n=80, classes=7, groups=4):
    logits = rng.normal(size=(n, classes))
    targets = rng.integers(0, classes, size=n)
    logits[np.arange(n), targets] += rng.normal(1.0, 1.0, size=n)
    import torch

    samples = zeroshot_classification.outcomes(torch.from_numpy(logits), torch.from_numpy(targets))
    samples["group"] = rng.choice([0, 1, 3], size=n).astype(np.int32)  # group 2 has no image
    return samples


def test_worst_group_accuracy_is_the_lowest_over_groups_with_images():
    samples = _samples(np.random.default_rng(1))
    metrics = zeroshot_classification.score(samples, {"f1_macro": True})
    correct1 = samples["top5"][:, 0] == samples["target"]
    correct5 = (samples["top5"] == samples["target"][:, None]).any(axis=1)
    per_group1 = [correct1[samples["group"] == g].mean() for g in (0, 1, 3)]
    per_group5 = [correct5[samples["group"] == g].mean() for g in (0, 1, 3)]
    assert metrics["acc1_worst_group"] == pytest.approx(min(per_group1))
    assert metrics["acc5_worst_group"] == pytest.approx(min(per_group5))
    assert min(per_group1) < max(per_group1)  # the groups differ: the minimum is a choice


def test_unit_statistics_reduce_to_the_scores_with_groups_and_f1():
    samples = _samples(np.random.default_rng(2))
    params = {"f1_macro": True}
    stats = zeroshot_classification.unit_statistics(samples, params)
    reduced = stats.reduce(stats.sums(np.ones((1, stats.n_units))))
    for name, value in zeroshot_classification.score(samples, params).items():
        assert reduced[name][0, 0] == pytest.approx(value), name
    # a resample without the worst group's images has a different worst group
    weights = np.ones((1, stats.n_units))
    worst = min((0, 1, 3), key=lambda g: (samples["top5"][:, 0] == samples["target"])[samples["group"] == g].mean())
    weights[0, samples["group"] == worst] = 0
    assert stats.reduce(stats.sums(weights))["acc1_worst_group"][0, 0] > reduced["acc1_worst_group"][0, 0]


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_wds_with_metadata(root: Path, n: int = 24, seed: int = 5, metadata: bool = True) -> Path:
    """Write a DataComp-style webdataset set: classnames, templates, test/0.tar of <key>.png, .cls and .npy."""
    rng = np.random.default_rng(seed)
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(TINY_CLASSNAMES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TINY_TEMPLATES) + "\n")
    (root / "test" / "nshards.txt").write_text("1\n")
    palette = rng.uniform(30, 225, size=(len(TINY_CLASSNAMES), 3))
    with tarfile.open(root / "test" / "0.tar", "w") as archive:
        for i in range(n):
            label = int(rng.integers(len(TINY_CLASSNAMES)))
            image = io.BytesIO()
            _noisy_image(rng, palette[label]).save(image, format="PNG")
            _add(archive, f"s{i:04d}.png", image.getvalue())
            _add(archive, f"s{i:04d}.cls", str(label).encode())
            if metadata:
                row = io.BytesIO()
                np.save(row, np.array([i % 3, 2000 + i, label], dtype=np.int64))
                _add(archive, f"s{i:04d}.npy", row.getvalue())
    return root


def test_webdataset_metadata_feeds_the_worst_group_metric(tmp_path, tiny_model):
    dataset = WdsClassification(write_wds_with_metadata(tmp_path / "wds"), "test", tiny_model.preprocess)
    assert dataset.metadata.shape == (24, 3) and list(dataset.metadata[:4, 0]) == [0, 1, 2, 0]
    task = TASKS["zeroshot_classification"]
    outcome = task.evaluate(tiny_model, {"eval": dataset}, task.protocol({"group_column": 0, "f1_macro": True}, "t"),
                            progress=False)
    correct = outcome.samples["top5"][:, 0] == outcome.samples["target"]
    assert list(outcome.samples["group"]) == [i % 3 for i in range(24)]
    assert outcome.metrics["acc1_worst_group"] == pytest.approx(min(correct[np.arange(24) % 3 == g].mean()
                                                                    for g in range(3)))
    assert math.isfinite(outcome.metrics["f1_macro"])
    first = FirstSamples(dataset, 6)
    assert first.metadata.shape == (6, 3)
    with pytest.raises(UserError, match="beyond the 3 metadata fields"):
        task.evaluate(tiny_model, {"eval": dataset}, task.protocol({"group_column": 3}, "t"), progress=False)


def test_a_set_without_metadata_is_one_line_when_a_group_is_asked(tmp_path, tiny_model):
    dataset = WdsClassification(write_wds_with_metadata(tmp_path / "wds", metadata=False), "test",
                                tiny_model.preprocess)
    task = TASKS["zeroshot_classification"]
    with pytest.raises(UserError, match=r"have no \.npy metadata") as info:
        task.evaluate(tiny_model, {"eval": dataset}, task.protocol({"group_column": 0}, "t"), progress=False)
    assert "\n" not in str(info.value)
    plain = task.evaluate(tiny_model, {"eval": dataset}, task.protocol({}, "t"), progress=False)
    assert set(plain.metrics) == {"acc1", "acc5", "mean_per_class_recall"}  # nothing new unless asked


def test_mean_recall_is_the_mean_of_both_directions(tiny_model, tiny_retrieval_dir):
    task = TASKS["retrieval"]
    metrics = task.evaluate(tiny_model, {"eval": tiny_retrieval_dir.dataset(tiny_model.preprocess)},
                            task.protocol({}, "t"), progress=False).metrics
    for k in (1, 5, 10):
        assert metrics[f"mean_recall@{k}"] == pytest.approx(
            (metrics[f"image_retrieval_recall@{k}"] + metrics[f"text_retrieval_recall@{k}"]) / 2)


def test_a_run_marks_the_mean_of_a_row_that_lacks_benchmarks(tmp_path, tiny_model_dir, capsys):
    from silc_eval.cli import main

    data = tmp_path / "data"
    write_wds_with_metadata(data / "datacomp" / "wds_wilds-fmow_test")
    write_wds_with_metadata(data / "datacomp" / "wds_geode_test", seed=6)
    out = tmp_path / "out"
    assert main(["run", "--suite", "datacomp38", "--model", f"local-dir:{tiny_model_dir}", "--data-root", str(data),
                 "--output", str(out), "--no-progress"]) == 0
    assert "skipping 36 of 38 benchmarks" in capsys.readouterr().err
    assert " of 2)" not in (out / "leaderboard.md").read_text()  # both benchmarks ran: the row is complete
    assert sorted(p.stem for p in (out / "records").rglob("*.json")) == ["datacomp-fmow", "datacomp-geode"]
    other = build_tiny_model_dir(tmp_path / "other", seed=3)
    assert main(["run", "--benchmark", "datacomp-fmow", "--model", f"local-dir:{other}", "--data-root", str(data),
                 "--output", str(out), "--no-progress"]) == 0
    summary = (out / "leaderboard.md").read_text().split("## ")[1]
    rows = [line for line in summary.splitlines() if line.startswith("| other") or line.startswith("| tiny")]
    assert len(rows) == 2 and sum("(1 of 2)" in row for row in rows) == 1 and "is partial" in summary


def test_group_means_and_average_on_hand_made_records_follow_aggregate_scores(tmp_path, monkeypatch, capsys):
    # DataComp's aggregate_scores.py: ImageNet = ImageNet 1k; each group the plain mean of its sets; the average
    # the mean over every set; a row lacking sets gets no group mean where it
    # lacks one, and its overall mean is marked partial.
    import json

    import pandas as pd

    from silc_eval.cli import main
    from silc_eval.evaluate.records import RECORD_SCHEMA

    monkeypatch.setenv("SILC_EVAL_ZOO", str(tmp_path / "zoo"))
    (tmp_path / "zoo").mkdir()
    suite = resolve_suite("datacomp38")
    rng = np.random.default_rng(3)
    values = {b.name: float(rng.uniform(0.05, 0.95)) for b in suite}
    lacking = {"datacomp-svhn", "datacomp-mscoco"}
    folder = tmp_path / "results"
    for model in ("full", "partial"):
        for b in suite:
            if model == "partial" and b.name in lacking:
                continue
            record = {"schema": RECORD_SCHEMA,
                      "model": {"name": model, "sha256": "0" * 64, "source": model, "architecture": "local-dir:x"},
                      "benchmark": {"name": b.name, "task": b.task, "group": b.group, "main_metric": b.main_metric},
                      "dataset": {"name": b.name, "fingerprint": "f" * 16, "size": 10, "declaration": {}},
                      "protocol": {}, "metrics": {b.main_metric: values[b.name]},
                      "provenance": {"silc_eval_version": "0.1.0", "git_commit": "abc", "wall_time_s": 1.0}}
            path = folder / "records" / model / f"{b.name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record))
    assert main(["report", str(folder), "--format", "csv,md"]) == 0
    capsys.readouterr()
    groups = pd.read_csv(folder / "groups.csv", index_col="model")
    for group, count in GROUPS.items():
        members = [b.name for b in suite if b.group == group]
        assert len(members) == count
        assert groups.at["full", group] == pytest.approx(100 * np.mean([values[m] for m in members]), abs=1e-3)
    assert groups.at["full", "DataComp: ImageNet"] == pytest.approx(100 * values["datacomp-imagenet1k"], abs=1e-3)
    assert groups.at["full", "mean"] == pytest.approx(100 * np.mean(list(values.values())), abs=1e-3)
    assert pd.isna(groups.at["partial", "DataComp: VTAB"]) and pd.isna(groups.at["partial", "DataComp: retrieval"])
    assert groups.at["partial", "DataComp: others"] == groups.at["full", "DataComp: others"]
    summary = (folder / "leaderboard.md").read_text().split("## ")[1]
    partial_row = next(line for line in summary.splitlines() if line.startswith("| partial"))
    full_row = next(line for line in summary.splitlines() if line.startswith("| full"))
    assert partial_row.endswith("(36 of 38) |") and " of 38)" not in full_row


def write_winogavil(root: Path, instances: int = 16, seed: int = 9) -> Path:
    """Write winogavil_dataset.csv (candidates and associations as JSON lists, as the release) and images/*.png:
    instances of 5, 6, 10 and 12 candidates drawn from a shared pool of named images."""
    import csv
    import json

    rng = np.random.default_rng(seed)
    names = [f"{w}{i}" for i, w in enumerate(["eagle", "ash", "teepee", "metal", "factory", "yak", "grass", "moon",
                                              "island", "wing", "sleep", "night", "coat", "wood"])]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in names:
        _noisy_image(rng, rng.uniform(30, 225, size=3)).save(root / "images" / f"{name}.png")
    with open(root / "winogavil_dataset.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "candidates", "cue", "associations", "num_associations", "num_candidates", "ID"])
        for n in range(instances):
            count = (5, 6, 10, 12)[n % 4]
            candidates = list(rng.choice(names, size=count, replace=False))
            associations = list(rng.choice(candidates, size=int(rng.integers(2, 5)), replace=False))
            cue = ["Orange", "red", "apple", "Blue"][n % 4]
            writer.writerow([n, json.dumps(candidates), cue, json.dumps(associations), len(associations), count, n])
    return root


def datacomp_wino_reference(model, dataset) -> dict[str, float]:
    """DataComp's eval_utils/wino_eval.py written out: per instance the cue prompt against the candidates, the top
    n_assoc by np.argsort, scikit-learn's jaccard_score; means over all, <= 6 and >= 10 candidates."""
    import torch
    from sklearn.metrics import jaccard_score

    scores, groups = [], []
    for images, cue, y_true in (dataset[i] for i in range(len(dataset))):
        cue = cue.lower()
        prompt = f"An {cue}" if cue[0] in "aeiou" else f"A {cue}"
        with torch.no_grad():
            image_features = model.model.encode_image(images, normalize=True)
            text_features = model.model.encode_text(model.tokenizer([prompt]), normalize=True)
        logits = (text_features @ image_features.T).squeeze(0).numpy()
        y_true = y_true.numpy()
        top = np.argsort(logits)[-int(y_true.sum()):]
        scores.append(jaccard_score(y_true, np.isin(np.arange(len(images)), top)))
        groups.append(len(images))
    scores, groups = np.array(scores), np.array(groups)
    return {"jaccard_score": scores.mean(), "jaccard_score_5-6": scores[groups <= 6].mean(),
            "jaccard_score_10-12": scores[groups >= 10].mean()}


def test_winogavil_matches_datacomps_procedure(tmp_path, tiny_model):
    from silc_eval.data.winogavil import Associations
    from silc_eval.tasks import association

    dataset = Associations(write_winogavil(tmp_path / "winogavil"), tiny_model.preprocess)
    assert len(dataset) == 16 and len(dataset.image_files) <= 14  # candidates shared between instances, read once
    task = TASKS["association"]
    outcome = task.evaluate(tiny_model, {"eval": dataset}, task.protocol({}, "t"), progress=False)
    reference = datacomp_wino_reference(tiny_model, dataset)
    for name, value in reference.items():
        assert outcome.metrics[name] == pytest.approx(value, abs=1e-9), name
    assert 0.0 < outcome.metrics["jaccard_score"] < 1.0
    assert association.cue_prompt("Orange") == "An orange" and association.cue_prompt("red") == "A red"
    stats = association.unit_statistics(outcome.samples)
    reduced = stats.reduce(stats.sums(np.ones((1, stats.n_units))))
    for name, value in outcome.metrics.items():
        assert reduced[name][0, 0] == pytest.approx(value)


def test_instance_jaccard_by_hand():
    from silc_eval.tasks.association import instance_jaccard

    associated = np.array([True, False, True, False, False])
    assert instance_jaccard(np.array([0.9, 0.1, 0.8, 0.2, 0.3]), associated) == 1.0
    assert instance_jaccard(np.array([0.9, 0.1, 0.2, 0.8, 0.3]), associated) == pytest.approx(1 / 3)
    assert instance_jaccard(np.array([0.1, 0.9, 0.2, 0.8, 0.3]), associated) == 0.0


def test_bad_winogavil_layouts_are_one_line(tmp_path):
    from silc_eval.data.winogavil import Associations

    with pytest.raises(UserError, match="expected winogavil_dataset.csv"):
        Associations(tmp_path)
    root = write_winogavil(tmp_path / "w")
    next((root / "images").iterdir()).unlink()
    with pytest.raises(UserError, match=r"1 WinoGAViL images are missing"):
        Associations(root)
    (root / "winogavil_dataset.csv").write_text('candidates,cue,associations\n"[""a"", ""b""]",x,"[""c""]"\n')
    with pytest.raises(UserError, match="associations outside its candidates"):
        Associations(root)
    (root / "winogavil_dataset.csv").write_text('candidates,cue\n"[""a""]",x\n')
    with pytest.raises(UserError, match="is not WinoGAViL's dataset file"):
        Associations(root)
