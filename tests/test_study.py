"""The training study: a YAML of recipes x budgets x seeds, trained, evaluated and reported; it resumes without
redoing finished runs, and its report's means and intervals are recomputed from its records."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import yaml
from test_training import TINY_MODEL

from silc_eval.cli import main
from silc_eval.core import resampling as rs
from silc_eval.core.errors import UserError
from silc_eval.core.records import read_samples, record_path
from silc_eval.registry import task_contract
from silc_eval.report.study_report import write_study_report
from silc_eval.train import loop
from silc_eval.train.study import load_study, merged

BENCHMARKS = ["synthscenes-zeroshot", "synthscenes-zeroshot-seg-vanilla"]


def tiny_recipe_file(folder, name, objective):
    recipe = {"name": name, "objective": objective, "seed": 0, "model": TINY_MODEL,
              "data": {"source": "synthscenes", "n_train": 64, "shuffle_buffer": 16},
              "optim": {"batch_size": 8, "steps": 1000, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 0,
                        "lr": 1e-3}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture
def study_file(tmp_path):
    recipes = {"a": {"recipe": tiny_recipe_file(tmp_path, "tiny-clip", "clip")},
               "b": {"recipe": tiny_recipe_file(tmp_path, "tiny-siglip", "siglip"), "set": {"optim": {"lr": 2e-3}}}}
    study = {"name": "tiny", "benchmarks": BENCHMARKS, "seeds": [0, 1], "budgets": [16, 24], "recipes": recipes,
             "compare": [["b", "a"]], "select": {"baseline": "a"}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_files_are_checked_with_one_line(tmp_path, study_file):
    study = load_study(study_file)
    assert len(study.runs) == 2 * 2 * 2 and study.runs[0].model_name == "a-16-s0"
    assert study.runs[-1].changes == {"optim": {"lr": 2e-3}}
    data = yaml.safe_load(study_file.read_text())
    for change, message in (({"seeds": []}, "non-empty list"), ({"budgets": [16, 16]}, "twice"),
                            ({"compare": [["a", "zzz"]]}, "pairs of recipe labels"),
                            ({"recipes": {"a": {"recipe": "no-such-recipe"}}}, "unknown recipe"),
                            ({"suite": "all"}, "exactly one of"),
                            ({"select": {"baseline": "zzz"}}, "'select' must be"),
                            ({"select": {"baseline": "a", "exclude": ["zzz"]}}, "'select' must be")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**data, **change}))
        with pytest.raises(UserError, match=message):
            load_study(path)
    assert main(["study", str(tmp_path / "missing.yaml"), "--output", str(tmp_path / "o")]) == 2


def test_a_recipe_can_have_its_own_budgets(tmp_path, study_file):
    data = yaml.safe_load(study_file.read_text())
    data["recipes"]["a"]["budgets"] = [16, 24, 40]
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(data))
    study = load_study(path)
    assert sorted({(r.label, r.budget) for r in study.runs}) == [("a", 16), ("a", 24), ("a", 40), ("b", 16),
                                                                        ("b", 24)]
    data["recipes"]["a"]["budgets"] = [0]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="recipes.a.budgets"):
        load_study(path)


def test_matched_flops_pairs_each_budget_with_the_nearest_within_the_factor():
    from silc_eval.report.study_report import matched_budgets

    flops = {("silc", 8): 12.0, ("silc", 20): 30.0, ("siglip", 8): 3.0, ("siglip", 20): 7.0, ("siglip", 36): 12.4,
             ("views", 8): 10.0, ("views", 20): 26.0}
    rows = [{"label": label, "budget_images": budget, "training_flops": value} for (label, budget), value in
            flops.items()]
    assert matched_budgets(rows, "silc", "siglip", "images") == [(8, 8), (20, 20)]
    assert matched_budgets(rows, "silc", "siglip", "flops") == [(8, 36)]  # 30 has no siglip budget within 1.25x
    # an equal-images pair is not repeated as an equal-FLOPs pair
    assert matched_budgets(rows, "silc", "views", "flops") == []
    assert matched_budgets(rows, "siglip", "silc", "flops") == [(36, 8)]


def test_merged_recipes_keep_what_they_do_not_change():
    base = {"optim": {"lr": 1, "steps": 2}, "objective": {"name": "silc", "distill": {"out_dim": 8}}}
    out = merged(base, {"optim": {"lr": 3}, "objective": {"distill": {"start_step": 4}}})
    assert out == {"optim": {"lr": 3, "steps": 2}, "objective": {"name": "silc", "distill": {"out_dim": 8,
                                                                                            "start_step": 4}}}
    assert base["optim"]["lr"] == 1  # a copy


@pytest.fixture
def trained(monkeypatch):
    """The model folders the study trains, in order (loop.train counted)."""
    names = []
    original = loop.train

    def counting(recipe, folder, **kwargs):
        names.append(folder.name)
        return original(recipe, folder, **kwargs)

    monkeypatch.setattr(loop, "train", counting)
    return names


def test_study_trains_evaluates_reports_and_resumes_without_retraining(tmp_path, study_file, trained):
    output = tmp_path / "out"
    assert main(["study", str(study_file), "--output", str(output), "--no-progress"]) == 0
    assert sorted(trained) == sorted(f"{label}-{budget}-s{seed}" for label in "ab" for budget in (16, 24)
                                     for seed in (0, 1))
    card = yaml.safe_load((output / "models" / "b-24-s1" / "card.yaml").read_text())
    assert card["training"]["steps"] == 3 and card["training"]["seed"] == 1 and card["training"]["optim"]["lr"] == 2e-3
    assert card["compute"]["images_seen"] == 24
    report = (output / "report.md").read_text()
    assert "## synthscenes-zeroshot (acc1)" in report and "| b − a | 16 |" in report
    # a and b cost the same per image, so budgets 16 and 24 (1.5x apart) are no equal-FLOPs pair
    assert "## Paired differences at matched training FLOPs" in report and "No compared pair has budgets" in report
    assert (output / "score_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Selection at 16 images" in report and ("**Selected: b**" in report or "**Kept: a**" in report)

    # Resume: nothing is trained again and every record is kept.
    trained.clear()
    stamps = {p: p.stat().st_mtime_ns for p in (output / "results" / "records").glob("*/*.json")}
    assert main(["study", str(study_file), "--output", str(output), "--no-progress"]) == 0
    assert trained == []
    assert {p: p.stat().st_mtime_ns for p in (output / "results" / "records").glob("*/*.json")} == stamps

    # The report's numbers, recomputed from the records: mean over seeds and the stacked bootstrap.
    rows = list(csv.DictReader((output / "study.csv").open()))
    assert len(rows) == 2 * 2 * len(BENCHMARKS)
    plan = json.loads((output / "study.json").read_text())
    for row in rows:
        models = [r["model"] for r in plan["runs"] if r["label"] == row["label"]
                  and r["budget_images"] == int(row["budget_images"])]
        records = [json.loads(record_path(output / "results", m, row["benchmark"]).read_text()) for m in models]
        values = [r["metrics"][row["metric"]] for r in records]
        assert float(row["mean"]) == pytest.approx(np.mean(values), abs=1e-6)
        stats = [task_contract(r["benchmark"]["task"]).unit_statistics(
            read_samples(record_path(output / "results", r["model"]["name"], r["benchmark"]["name"]), r),
            r["protocol"]) for r in records]
        interval = rs.bootstrap_interval(rs.stack_seeds(stats), row["metric"])
        assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((interval.low, interval.high), abs=1e-6)
        assert float(row["ci_low"]) <= float(row["mean"]) <= float(row["ci_high"])

    # A published copy (plan, records, cards; no weights) reports the same once the study's own folder is gone.
    published = tmp_path / "published"
    shutil.copytree(output, published, ignore=shutil.ignore_patterns("*.safetensors", ".*"))
    shutil.rmtree(output)
    write_study_report(published)
    assert list(csv.DictReader((published / "study.csv").open())) == rows


def test_a_run_whose_recipe_changed_is_trained_again(tmp_path, study_file, trained):
    study = yaml.safe_load(study_file.read_text())
    study.update(seeds=[0], budgets=[16])
    study_file.write_text(yaml.safe_dump(study))
    output = tmp_path / "out"
    assert main(["study", str(study_file), "--output", str(output), "--no-progress", "--train-only"]) == 0
    assert sorted(trained) == ["a-16-s0", "b-16-s0"]
    trained.clear()
    study["recipes"]["b"]["set"]["optim"]["lr"] = 3e-3
    study_file.write_text(yaml.safe_dump(study))
    assert main(["study", str(study_file), "--output", str(output), "--no-progress", "--train-only"]) == 0
    assert trained == ["b-16-s0"]
    assert yaml.safe_load((output / "models" / "b-16-s0" / "card.yaml").read_text())["training"]["optim"]["lr"] == 3e-3

    # A card written before cards carried the recipe hash is matched by its objective, optimiser and seed.
    trained.clear()
    card_path = output / "models" / "a-16-s0" / "card.yaml"
    card = yaml.safe_load(card_path.read_text())
    del card["training"]["weights_hash"]
    card_path.write_text(yaml.safe_dump(card))
    assert main(["study", str(study_file), "--output", str(output), "--no-progress", "--train-only"]) == 0
    assert trained == []
    card["training"]["seed"] = 5
    card_path.write_text(yaml.safe_dump(card))
    assert main(["study", str(study_file), "--output", str(output), "--no-progress", "--train-only"]) == 0
    assert trained == ["a-16-s0"]


def test_stacked_seeds_average_the_seeds_and_resample_them():
    rng = np.random.default_rng(0)
    correct = [rng.random((50, 1, 1)) < p for p in (0.3, 0.7)]

    def reduce(sums):
        return {"acc": sums[..., 0] / 50}

    stats = [rs.UnitStatistics(c.astype(float), reduce) for c in correct]
    stacked = rs.stack_seeds(stats)
    assert stacked.seeds == 2
    assert rs.full_sample(stacked, ["acc"])["acc"] == pytest.approx(np.mean([c.mean() for c in correct]))
    wide = rs.bootstrap_interval(stacked, "acc")
    narrow = rs.bootstrap_interval(stats[0], "acc")
    assert wide.high - wide.low > narrow.high - narrow.low  # the seeds' spread widens the interval


def test_a_validation_world_is_declared_checked_and_reported(tmp_path, study_file):
    from silc_eval.report.study_report import render_markdown

    data = yaml.safe_load(study_file.read_text())
    path = tmp_path / "validation.yaml"
    path.write_text(yaml.safe_dump({**data, "synthscenes_seed": 1}))
    assert load_study(path).synthscenes_seed == 1 and load_study(study_file).synthscenes_seed is None
    for bad in (0, -1, "one", True):
        path.write_text(yaml.safe_dump({**data, "synthscenes_seed": bad}))
        with pytest.raises(UserError, match="synthscenes_seed"):
            load_study(path)
    plan = {"name": "tuning", "description": "", "runs": [], "synthscenes_seed": 1}
    assert "SynthScenes world of seed 1" in render_markdown(plan, [], [], 1000, 0.95)
    assert "Validation world" not in render_markdown({**plan, "synthscenes_seed": None}, [], [], 1000, 0.95)


def test_run_scores_the_validation_world_not_the_benchmarks_own(tmp_path, tiny_model_dir):
    out = {seed: tmp_path / f"out{seed}" for seed in (0, 1)}
    for seed, folder in out.items():
        args = ["run", "--benchmark", "synthscenes-zeroshot", "--model", f"local-dir:{tiny_model_dir}", "--limit",
                "40", "--output", str(folder), "--no-progress"] + (["--synthscenes-seed", "1"] if seed else [])
        assert main(args) == 0
    records = {seed: next((folder / "records").rglob("*.json")) for seed, folder in out.items()}
    prints = {seed: json.loads(path.read_text())["dataset"]["fingerprint"] for seed, path in records.items()}
    assert prints[0] != prints[1]  # other scenes: another dataset
    samples = {seed: read_samples(path, json.loads(path.read_text())) for seed, path in records.items()}
    assert not np.array_equal(samples[0]["target"], samples[1]["target"]) or \
        not np.array_equal(samples[0]["top5"], samples[1]["top5"])


def correctness_rows(label: str, benchmark: str, rates: tuple[float, ...], rng) -> dict:
    """Return a study-report row of one label on one benchmark: per seed, 400 images' correctness drawn at a rate."""
    def reduce(sums):
        return {"acc": sums[..., 0] / 400}

    stats = [rs.UnitStatistics((rng.random((400, 1, 1)) < p).astype(float), reduce) for p in rates]
    mean = rs.full_sample(rs.stack_seeds(stats), ["acc"])["acc"]
    return {"label": label, "budget_images": 64, "benchmark": benchmark, "metric": "acc", "mean": mean,
            "_stats": stats}


def test_the_declared_rule_selects_a_candidate_only_beyond_the_noise():
    from silc_eval.report.study_report import mean_score_difference, paired_replicates, select_recipe

    rng = np.random.default_rng(3)
    rows = []
    for benchmark in ("one", "two"):
        rows += [correctness_rows("base", benchmark, (0.50, 0.52), rng),
                 correctness_rows("better", benchmark, (0.70, 0.72), rng),
                 correctness_rows("same", benchmark, (0.50, 0.53), rng),
                 correctness_rows("control", benchmark, (0.95, 0.95), rng)]
    chosen = select_recipe(rows, {"baseline": "base", "exclude": ["control"]}, 500, 0, 0.95)[0]
    assert chosen["ranking"][0] == "better" and "control" not in chosen["ranking"]
    assert chosen["selected"] == "better" and chosen["difference"]["low"] > 0
    # The difference of the means is the mean of the per-benchmark differences; its replicates average theirs.
    index = {(r["label"], r["benchmark"]): r for r in rows}
    per_benchmark = [index[("better", b)]["mean"] - index[("base", b)]["mean"] for b in ("one", "two")]
    assert chosen["difference"]["delta"] == pytest.approx(np.mean(per_benchmark))
    draws = np.mean([paired_replicates(index[("better", b)], index[("base", b)], 500, 0) for b in ("one", "two")],
                    axis=0)
    assert (chosen["difference"]["low"], chosen["difference"]["high"]) == pytest.approx(
        tuple(np.percentile(draws, [2.5, 97.5])))
    within = select_recipe([r for r in rows if r["label"] in ("base", "same")], {"baseline": "base"}, 500, 0, 0.95)[0]
    assert within["best"] == "same" and within["selected"] == "base"
    difference = mean_score_difference(rows, "same", "base", 64, ["one", "two"], 500, 0, 0.95)
    assert difference["low"] <= 0 <= difference["high"]
