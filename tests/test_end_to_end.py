"""`silc-eval run --suite quick` end to end on the zoo, and the zoo's reference scores."""

import json
import math

import pandas as pd
import pytest

from silc_eval.cli import main
from silc_eval.models.zoo import list_zoo, reference_scores
from silc_eval.registry import resolve_suite
from silc_eval.tasks import TASKS

# Reference scores are measured on this machine class; a different BLAS split of the
# work may flip a handful of near-tied decisions, which is at most a few in a thousand.
REFERENCE_TOLERANCE = 0.003


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("quick")
    assert main(["run", "--suite", "quick", "--output", str(output), "--no-progress"]) == 0
    return output


def test_zoo_is_not_empty_and_small():
    zoo = list_zoo()
    assert zoo, "model_zoo/ must hold at least one trained checkpoint"
    for entry in zoo:
        total = sum(p.stat().st_size for p in entry.folder.iterdir() if p.is_file())
        assert total <= 10 * 1024 * 1024, f"{entry.name} is {total} bytes"


def test_quick_run_writes_records_tables_and_leaderboard(quick_run):
    benchmarks = [b.name for b in resolve_suite("quick")]
    models = [e.name for e in list_zoo()]
    for model in models:
        for benchmark in benchmarks:
            record = json.loads((quick_run / "records" / model / f"{benchmark}.json").read_text())
            assert record["model"]["sha256"] == next(e for e in list_zoo() if e.name == model).card["weights"]["sha256"]
            assert len(record["dataset"]["fingerprint"]) == 16
            assert record["protocol"]["batch_size"] > 0
            assert {"torch", "open_clip_torch", "clip-benchmark"} <= set(record["provenance"]["packages"])
            assert record["provenance"]["git_commit"]
            assert record["provenance"]["wall_time_s"] > 0
    results = pd.read_csv(quick_run / "results.csv")
    assert list(results.columns)[:6] == ["model", "benchmark", "group", "task", "metric", "value"]
    assert set(results["benchmark"]) == set(benchmarks) and set(results["model"]) == set(models)
    assert set(results.loc[results["benchmark"] == "synthscenes-retrieval", "metric"]) == {
        f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 5, 10)}
    leaderboard = pd.read_csv(quick_run / "leaderboard.csv", index_col="model")
    assert list(leaderboard.columns) == benchmarks + ["mean"]
    assert list(leaderboard.index) == models
    assert leaderboard["mean"].tolist() == pytest.approx(leaderboard[benchmarks].mean(axis=1).tolist())
    markdown = (quick_run / "leaderboard.md").read_text()
    assert "synthscenes-zeroshot (acc1)" in markdown and models[0] in markdown


def test_zoo_scores_match_card_reference_scores(quick_run):
    for entry in list_zoo():
        references = reference_scores(entry)
        for benchmark in resolve_suite("quick"):
            record = json.loads((quick_run / "records" / entry.name / f"{benchmark.name}.json").read_text())
            expected = references[benchmark.name]
            for metric, value in record["metrics"].items():
                if math.isnan(value):
                    assert math.isnan(expected[metric])
                else:
                    assert value == pytest.approx(expected[metric], abs=REFERENCE_TOLERANCE), (entry.name, metric)


def test_zoo_checkpoints_score_above_chance(quick_run):
    # Every zoo model beats chance by more than four standard deviations of a guesser's
    # accuracy; the baseline CLIP (the spine's first checkpoint) clearly so.
    for entry in list_zoo():
        zeroshot = json.loads((quick_run / "records" / entry.name / "synthscenes-zeroshot.json").read_text())
        retrieval = json.loads((quick_run / "records" / entry.name / "synthscenes-retrieval.json").read_text())
        n_classes, n_images = 10, retrieval["dataset"]["size"]
        chance = 1 / n_classes
        margin = 4 * math.sqrt(chance * (1 - chance) / zeroshot["dataset"]["size"])
        assert zeroshot["metrics"]["acc1"] > chance + margin, entry.name
        assert retrieval["metrics"]["image_retrieval_recall@1"] > 20 / n_images, entry.name
        assert retrieval["metrics"]["text_retrieval_recall@1"] > 20 / n_images, entry.name
        if entry.card["training"]["recipe"] == "clip":
            assert zeroshot["metrics"]["acc1"] > 3 * chance
