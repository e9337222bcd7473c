"""Confidence intervals and paired tests (issue 13): the bootstrap engine, every task's unit statistics, and the
report / compare / check paths that recompute them from sidecars without a model."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from silc_eval.cli import main
from silc_eval.core import resampling as rs
from silc_eval.core.records import (
    RECORD_SCHEMA,
    read_samples,
    record_path,
    write_samples,
)
from silc_eval.machinery.segmentation_metrics import segmentation_unit_statistics
from silc_eval.tasks import TASKS

ZOO_RECORDS = Path(__file__).resolve().parents[1] / "reports" / "records"
REAL_RECORDS = sorted(ZOO_RECORDS.glob("*/*.json"))


# ----------------------------------------------------------------------------- helpers

def same(a, b) -> bool:
    """Return whether two metric values agree to 1e-9 (None and NaN both mean undefined)."""
    a = math.nan if a is None else a
    b = math.nan if b is None else b
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9


def classification_samples(target, prediction, num_classes: int) -> dict:
    """Return zero-shot classification outcomes whose top-1 is prediction and top-5 the next classes after it."""
    target, prediction = np.asarray(target), np.asarray(prediction)
    width = min(5, num_classes)
    top = (prediction[:, None] + np.arange(width)[None]) % num_classes
    return {"target": target.astype(np.int32), "top5": top.astype(np.int32),
            "prediction": prediction.astype(np.int32), "num_classes": np.array(num_classes, dtype=np.int32)}


def retrieval_samples(rng, n_images: int) -> dict:
    """Return retrieval outcomes with 1 to 3 captions per image and random hits (monotone in k)."""
    per_image = rng.integers(1, 4, n_images)
    caption_image = np.repeat(np.arange(n_images), per_image).astype(np.int32)
    image_rank = rng.integers(0, 12, len(caption_image))
    text_rank = rng.integers(0, 12, n_images)
    ks = np.array([1, 5, 10], dtype=np.int32)
    return {"caption_image": caption_image, "image_rank": image_rank.astype(np.int32),
            "text_rank": text_rank.astype(np.int32), "image_hits": image_rank[:, None] < ks[None],
            "text_hits": text_rank[:, None] < ks[None], "recall_k": ks}


def probe_samples(rng, n: int, seeds: int, shots=("full", "1", "5")) -> dict:
    """Return linear-probe outcomes: random predictions per shot and seed; the '5' setting was not run."""
    target = rng.integers(0, 4, n).astype(np.int32)
    predictions = np.where(rng.random((len(shots), seeds, n)) < 0.6, target[None, None], rng.integers(0, 4, n))
    predictions[list(shots).index("5")] = -1
    return {"target": target, "predictions": predictions.astype(np.int32), "shots": np.array(shots),
            "seeds": np.arange(seeds, dtype=np.int64)}


def segmentation_samples(rng, n: int, classes: int = 6, seeds: int | None = None, unseen=None) -> dict:
    """Return per-image (per-seed) counts: classes 4 and 5 rare, class 5 never labelled nor predicted."""
    shape = (n, classes) if seeds is None else (seeds, n, classes)
    label = rng.integers(0, 50, shape) * (rng.random(shape) < 0.7)
    label[..., 4] *= rng.random(shape[:-1]) < 0.1
    label[..., 5] = 0
    intersect = (label * rng.uniform(0.2, 1.0, shape)).astype(np.int64)
    pred = intersect + rng.integers(0, 20, shape) * (label > 0)
    samples = {"intersect": intersect, "union": pred + label - intersect, "pred_label": pred, "label": label,
               "class_names": np.array([f"c{i}" for i in range(classes)])}
    if unseen is not None:
        samples["unseen"] = np.isin(np.arange(classes), unseen)
    return samples


def take_units(task: str, samples: dict, index: np.ndarray) -> dict:
    """Return the outcomes of the images index (with repeats) of a sample set, captions going with their image."""
    out = dict(samples)
    if task == "zeroshot_classification":
        out.update(target=samples["target"][index], top5=samples["top5"][index],
                   prediction=samples["prediction"][index])
    elif task == "retrieval":
        captions = np.concatenate([np.flatnonzero(samples["caption_image"] == i) for i in index])
        out.update(text_hits=samples["text_hits"][index], text_rank=samples["text_rank"][index],
                   image_hits=samples["image_hits"][captions], caption_image=samples["caption_image"][captions])
    elif task == "linear_probe":
        out.update(target=samples["target"][index], predictions=samples["predictions"][..., index])
    else:
        for name in ("intersect", "union", "pred_label", "label"):
            out[name] = samples[name][..., index, :]
    return out


def explicit_resample_score(task: str, samples: dict, weights: np.ndarray, seed_draws: np.ndarray) -> dict:
    """Return the task's own score on an explicit resample: images repeated as weights says, and the mean over
    the drawn seeds (each weighted by its draw count) of each seed's score."""
    index = np.repeat(np.arange(len(weights)), weights.astype(int))
    resampled = take_units(task, samples, index)
    seeds = len(seed_draws)
    if seeds == 1 and np.ndim(samples.get("intersect", np.zeros((0, 0)))) != 3:
        return TASKS[task].score(resampled, {})
    per_seed = []
    for s in range(seeds):
        one = dict(resampled)
        if task == "linear_probe":
            one["predictions"] = resampled["predictions"][:, [s]]
        else:
            one.update({name: resampled[name][s] for name in ("intersect", "union", "pred_label", "label")})
        per_seed.append(TASKS[task].score(one, {}))
    means = {}
    for name in per_seed[0]:  # seeds where a metric is undefined are left out, as the tasks average seeds
        drawn = [(c, p[name]) for c, p in zip(seed_draws, per_seed) if c > 0 and not undefined(p[name])]
        means[name] = sum(c * v for c, v in drawn) / sum(c for c, _ in drawn) if drawn else math.nan
    return means


def undefined(value) -> bool:
    """Return whether a metric value is undefined (None or NaN)."""
    return value is None or math.isnan(value)


def without_interval(metrics) -> set[str]:
    """Return the metrics that get no interval: spreads over seeds (_std) and single seeds' values (_seed<s>)."""
    return {m for m in metrics if m.endswith("_std") or re.search(r"_seed\d+$", m)}


def synthetic_cases():
    """Return (task, samples) pairs covering every task kind and the edge cases of each."""
    rng = np.random.default_rng(7)
    target = rng.integers(0, 3, 40)
    return [
        ("zeroshot_classification", classification_samples(target, np.where(rng.random(40) < .5, target, 0), 3)),
        ("zeroshot_classification", classification_samples(rng.integers(0, 8, 60), rng.integers(0, 8, 60), 8)),
        ("retrieval", retrieval_samples(rng, 30)),
        ("linear_probe", probe_samples(rng, 50, seeds=1)),
        ("linear_probe", probe_samples(rng, 50, seeds=3)),
        ("zeroshot_segmentation", segmentation_samples(rng, 25)),
        ("linear_segmentation", segmentation_samples(rng, 25)),
        ("openvocab_segmentation", segmentation_samples(rng, 25, unseen=[1, 4])),
        ("openvocab_segmentation", segmentation_samples(rng, 25, unseen=[5])),  # unseen class never present
        ("linear_segmentation", {**segmentation_samples(rng, 25, seeds=3), "seeds": np.arange(3)}),
        ("openvocab_segmentation", {**segmentation_samples(rng, 25, seeds=2, unseen=[4]), "seeds": np.arange(2)}),
    ]


# ----------------------------------------------------------------------------- the full-sample statistic

@pytest.mark.skipif(not REAL_RECORDS, reason="reports/records holds no zoo records")
def test_full_sample_statistic_equals_every_zoo_record_metric():
    # Every record of the committed zoo run (all six tasks): with every image and seed taken once, the unit
    # statistics give each metric of the record exactly; only the seed spreads (_std) have no interval.
    tasks = set()
    for path in REAL_RECORDS:
        record = json.loads(path.read_text())
        task = TASKS[record["benchmark"]["task"]]
        full = rs.full_sample(task.unit_statistics(read_samples(path, record), record["protocol"]))
        assert set(record["metrics"]) - set(full) == without_interval(record["metrics"]), path
        for metric, value in full.items():
            assert same(value, record["metrics"][metric]), (path.name, metric, value, record["metrics"][metric])
        tasks.add(task.name)
    assert tasks == set(TASKS) - {"caption_selection", "association"}  # the tasks `all` does not run (no SynthScenes set)


@pytest.mark.parametrize("case", range(len(synthetic_cases())))
def test_full_sample_statistic_equals_the_task_score_on_synthetic_outcomes(case):
    task, samples = synthetic_cases()[case]
    expected = TASKS[task].score(samples, {})
    full = rs.full_sample(TASKS[task].unit_statistics(samples, {}))
    assert set(expected) - set(full) == without_interval(expected)
    for metric, value in full.items():
        assert same(value, expected[metric]), (task, metric, value, expected[metric])


@pytest.mark.parametrize("task", ["linear_segmentation", "openvocab_segmentation"])
def test_segmentation_counts_per_seed_are_a_seed_axis(task):
    # Trained-head sidecars may hold (S, N, C) counts: the metric is the mean over seeds of each seed's metric.
    samples = segmentation_samples(np.random.default_rng(3), 20, seeds=3,
                                   unseen=[1, 4] if task == "openvocab_segmentation" else None)
    samples["seeds"] = np.array([0, 1, 2])
    stats = segmentation_unit_statistics(samples)
    assert (stats.n_units, stats.seeds) == (20, 3)
    expected = TASKS[task].score(samples, {})
    per_seed = [TASKS[task].score({**samples, **{n: samples[n][s] for n in ("intersect", "union", "pred_label",
                                                                            "label")}}, {}) for s in range(3)]
    assert expected["mIoU"] == pytest.approx(np.mean([one["mIoU"] for one in per_seed]), abs=1e-12)
    for metric, value in rs.full_sample(stats).items():
        assert same(value, expected[metric]), (metric, value, expected[metric])


# ----------------------------------------------------------------------------- resamples are real resamples

@pytest.mark.parametrize("case", range(len(synthetic_cases())))
def test_each_replicate_is_the_task_score_of_an_explicit_resample(case):
    # Draw the unit counts and seed draws the engine draws, build the resampled outcomes by hand (images
    # repeated, retrieval captions going with their image) and score them with the task's own score.
    task, samples = synthetic_cases()[case]
    stats = TASKS[task].unit_statistics(samples, {})
    weights = next(rs.unit_count_chunks(stats.n_units, 4, seed=11))
    seed_draws = rs.seed_counts(stats.seeds, 4, seed=11)
    drawn = rs.replicates([stats], [None], resamples=4, seed=11)[0]
    for b in range(4):
        expected = explicit_resample_score(task, samples, weights[b], seed_draws[b])
        for metric, values in drawn.items():
            assert same(values[b], expected[metric]), (task, b, metric, values[b], expected[metric])


@pytest.mark.skipif(not REAL_RECORDS, reason="reports/records holds no zoo records")
def test_segmentation_replicate_recomputes_miou_from_the_resampled_images_counts():
    path = ZOO_RECORDS / "clip-vit-tiny-synth" / "synthscenes-openvocab-seg.json"
    record = json.loads(path.read_text())
    samples = read_samples(path, record)
    stats = TASKS["openvocab_segmentation"].unit_statistics(samples, {})
    weights = next(rs.unit_count_chunks(stats.n_units, 3, seed=0))[1]  # the second resample of seed 0
    seed_draws = rs.seed_counts(stats.seeds, 3, seed=0)[1]
    drawn = rs.replicates([stats], [["mIoU", "hIoU"]], resamples=3, seed=0)[0]
    counts = {name: np.asarray(samples[name]).reshape(-1, *np.shape(samples[name])[-2:])
              for name in ("intersect", "union")}  # (S, N, C): one head per seed
    assert counts["intersect"].shape[0] == stats.seeds == 3
    # direct computation: per seed, sum each image's counts as often as it was drawn and take mmseg's NaN-mean
    # of I / U; then the mean over the drawn seeds, each as often as it was drawn
    per_seed = []
    for seed in range(stats.seeds):
        intersect = (weights[:, None] * counts["intersect"][seed]).sum(axis=0)
        union = (weights[:, None] * counts["union"][seed]).sum(axis=0)
        with np.errstate(invalid="ignore"):
            per_seed.append(np.nanmean(intersect / union))
    assert drawn["mIoU"][1] == pytest.approx(np.dot(seed_draws, per_seed) / seed_draws.sum(), abs=1e-12)
    assert drawn["hIoU"][1] == pytest.approx(
        explicit_resample_score("openvocab_segmentation", samples, weights, seed_draws)["hIoU"], abs=1e-12)
    assert drawn["mIoU"][1] != pytest.approx(record["metrics"]["mIoU"], abs=1e-6)  # it is another sample


def test_draws_do_not_depend_on_the_chunk_size(monkeypatch):
    stats = TASKS["retrieval"].unit_statistics(retrieval_samples(np.random.default_rng(1), 50), {})
    whole = rs.replicates([stats], [None], resamples=64, seed=5)[0]
    monkeypatch.setattr(rs, "CHUNK_ELEMENTS", 50 * 7)  # 7 rows per chunk
    chunked = rs.replicates([stats], [None], resamples=64, seed=5)[0]
    assert all(np.array_equal(whole[m], chunked[m], equal_nan=True) for m in whole)


# ----------------------------------------------------------------------------- intervals

def binary_statistics(correct: np.ndarray) -> rs.UnitStatistics:
    """Return the unit statistics of a plain accuracy over units (with its per-unit correctness for McNemar)."""
    correct = np.asarray(correct, dtype=bool)
    values = np.stack([np.ones(len(correct)), correct], axis=1)[:, None, :]
    return rs.UnitStatistics(values, lambda s: {"acc": rs.ratio(s[..., 1], s[..., 0])}, {"acc": correct})


def test_a_fixed_seed_reproduces_the_interval_and_another_seed_moves_it():
    stats = TASKS["zeroshot_classification"].unit_statistics(synthetic_cases()[1][1], {})
    first = rs.bootstrap_interval(stats, "acc1", seed=3)
    assert rs.bootstrap_interval(stats, "acc1", seed=3) == first
    assert rs.bootstrap_interval(stats, "acc1", seed=4) != first
    assert first.low <= first.value <= first.high and first.resamples == 1000 and first.level == 0.95


def test_95_percent_intervals_cover_a_known_accuracy_in_95_percent_of_400_datasets():
    # 400 simulated datasets of 500 images, each image right with probability 0.7: the percentile interval of
    # each must cover 0.7 in 95% +- 3% of them. The datasets share one unit-count matrix (they are resampled
    # together, as one leaderboard's models are); given it, their coverage events are independent.
    truth, n, datasets = 0.7, 500, 400
    correct = np.random.default_rng(2024).random((n, datasets)) < truth
    values = np.concatenate([np.ones((n, 1, 1)), correct[:, None, :]], axis=2)
    stats = rs.UnitStatistics(values, lambda s: {f"acc{d}": s[..., 1 + d] / s[..., 0] for d in range(datasets)})
    drawn = rs.replicates([stats], [None], resamples=1000, seed=0)[0]
    covered = [low <= truth <= high for low, high in (rs.percentile_interval(drawn[f"acc{d}"], 0.95)
                                                      for d in range(datasets))]
    assert 0.92 <= np.mean(covered) <= 0.98, np.mean(covered)


def test_seed_variance_enters_the_interval():
    # Two seeds, every image scored alike within a seed (no image variance): accuracy 0.2 with one seed and
    # 0.8 with the other. Resampling only images would give a zero-width interval; the seeds widen it.
    values = np.zeros((100, 2, 2))
    values[..., 0] = 1
    values[:20, 0, 1] = 1
    values[:80, 1, 1] = 1
    values[:] = values.mean(axis=0, keepdims=True)  # each image carries the same share: no image variance
    stats = rs.UnitStatistics(values, lambda s: {"acc": s[..., 1] / s[..., 0]})
    interval = rs.bootstrap_interval(stats, "acc")
    assert interval.value == pytest.approx(0.5)
    assert interval.low == pytest.approx(0.2) and interval.high == pytest.approx(0.8)
    one_seed = rs.UnitStatistics(values[:, :1], stats.reduce)
    assert rs.bootstrap_interval(one_seed, "acc").high - rs.bootstrap_interval(one_seed, "acc").low == \
        pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- paired tests

@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(300) < 0.6
    b = np.where(rng.random(300) < 0.1 * seed, ~a, a)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    expected = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert rs.mcnemar(a, b) == expected


@pytest.mark.parametrize("case", range(len(synthetic_cases())))
def test_a_model_against_itself_differs_by_exactly_zero_with_p_1(case):
    task, samples = synthetic_cases()[case]
    stats = TASKS[task].unit_statistics(samples, {})
    twin = TASKS[task].unit_statistics({k: np.copy(v) for k, v in samples.items()}, {})
    for metric, value in rs.full_sample(stats).items():
        test = rs.paired_test(stats, twin, metric)
        if math.isnan(value):
            assert math.isnan(test.delta)
            continue
        assert (test.delta, test.low, test.high, test.p_value) == (0.0, 0.0, 0.0, 1.0), (task, metric, test)


def planted(n_flipped: int, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Return (baseline, better) correctness on n images: better gets n_flipped more images right."""
    base = np.random.default_rng(0).random(n) < 0.6
    better = base.copy()
    better[np.flatnonzero(~base)[:n_flipped]] = True
    return base, better


@pytest.mark.parametrize("flipped, significant", [(100, True), (2, False)])
def test_a_planted_10pp_difference_is_flagged_and_a_02pp_one_is_not(flipped, significant):
    base, better = planted(flipped)
    # McNemar (the metric is a per-image correctness) ...
    test = rs.paired_test(binary_statistics(better), binary_statistics(base), "acc")
    assert test.test == rs.MCNEMAR and test.delta == pytest.approx(flipped / 1000)
    assert (test.p_value < 0.05) is significant and (test.low > 0) is significant
    # ... and the paired bootstrap (the same data with no per-image correctness declared)
    plain_a, plain_b = (rs.UnitStatistics(binary_statistics(x).values, binary_statistics(x).reduce)
                        for x in (better, base))
    test = rs.paired_test(plain_a, plain_b, "acc")
    assert test.test == rs.PAIRED_BOOTSTRAP
    assert (test.p_value < 0.05) is significant and (test.low > 0) is significant


def test_bootstrap_p_value_counts_centred_deltas_at_least_as_extreme():
    deltas = np.array([0.0, 0.1, 0.2, 0.3, 0.4])  # centred on 0.2: 0.2, 0.1, 0, 0.1, 0.2 -> two reach 0.2
    assert rs.bootstrap_p_value(deltas, 0.2) == pytest.approx(3 / 6)
    assert rs.bootstrap_p_value(np.zeros(9), 0.0) == 1.0


def test_holm_matches_a_hand_computation():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> kept monotone at 0.06
    assert rs.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert rs.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    adjusted = rs.holm([0.02, math.nan, 0.04])  # NaN is not a test: m = 2
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


# ----------------------------------------------------------------------------- the command line

def write_run_record(folder: Path, model: str, benchmark: str, task: str, samples: dict, fingerprint: str = "f" * 16,
                     main_metric: str = "acc1", group: str = "classification") -> Path:
    """Write a v2 record (metrics from the task's score) and its sidecar under folder; returns the record path."""
    path = record_path(folder, model, benchmark)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = TASKS[task].score(samples, {})
    metrics = {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in metrics.items()}
    record = {"schema": RECORD_SCHEMA,
              "model": {"name": model, "sha256": "ab" * 32, "source": model, "architecture": "test"},
              "benchmark": {"name": benchmark, "task": task, "group": group, "main_metric": main_metric,
                            "task_version": 1},
              "dataset": {"name": benchmark, "fingerprint": fingerprint, "size": 1000}, "protocol": {},
              "metrics": metrics, "metric_directions": {k: "higher" for k in metrics},
              "samples": write_samples(path, samples)}
    path.write_text(json.dumps(record))
    return path


def correctness_samples(correct: np.ndarray) -> dict:
    """Return zero-shot classification outcomes (10 classes) right exactly where correct says."""
    target = np.arange(len(correct)) % 10
    return classification_samples(target, np.where(correct, target, (target + 5) % 10), 10)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """Two classification runs of model m on 1,000 images: 'before' and 'after' (10 pp better), and 'noisy'
    (0.5 pp worse: beyond a 0.3 pp tolerance, within the noise)."""
    monkeypatch.setenv("SILC_EVAL_ZOO", str(tmp_path / "zoo"))
    base, better = planted(100)
    worse = base.copy()
    worse[np.flatnonzero(base)[:5]] = False
    folders = {}
    for name, correct in (("before", base), ("after", better), ("noisy", worse)):
        folders[name] = tmp_path / name
        write_run_record(folders[name], "m", "cls", "zeroshot_classification", correctness_samples(correct))
    return folders


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def zoo_subset(tmp_path, monkeypatch):
    """Two zoo models on three benchmarks (classification, retrieval, segmentation), copied with sidecars,
    plus 'twin': clip's records under another name."""
    if not REAL_RECORDS:
        pytest.skip("reports/records holds no zoo records")
    monkeypatch.setenv("SILC_EVAL_ZOO", str(tmp_path / "zoo"))
    folder = tmp_path / "results"
    for model in ("clip-vit-tiny-synth", "silc-vit-tiny-synth"):
        (folder / "records" / model).mkdir(parents=True)
        for benchmark in ("synthscenes-zeroshot", "synthscenes-retrieval", "synthscenes-zeroshot-seg-sclip"):
            for suffix in (".json", ".samples.npz"):
                shutil.copy(ZOO_RECORDS / model / f"{benchmark}{suffix}", folder / "records" / model)
    twin = folder / "records" / "twin"
    shutil.copytree(folder / "records" / "clip-vit-tiny-synth", twin)
    for path in twin.glob("*.json"):
        record = json.loads(path.read_text())
        record["model"]["name"] = "twin"
        path.write_text(json.dumps(record))
    return folder


def test_report_writes_intervals_and_paired_deltas_from_sidecars(zoo_subset, capsys):
    code, _, err = run_cli(capsys, "report", zoo_subset, "--baseline", "clip-vit-tiny-synth", "--format", "csv,md",
                           "--interval-metrics", "acc5")
    assert code == 0, err
    results = pd.read_csv(zoo_subset / "results.csv")
    assert {"ci_low", "ci_high", "ci_method", "ci_level", "ci_resamples", "ci_seed"} <= set(results.columns)
    with_ci = results.dropna(subset=["ci_low"])
    assert set(with_ci["metric"]) == {"acc1", "acc5", "image_retrieval_recall@1", "mIoU"}  # main + asked
    assert (with_ci["ci_low"] <= with_ci["value"] + 1e-12).all() and (with_ci["value"] <= with_ci["ci_high"] + 1e-12).all()
    assert set(with_ci["ci_resamples"]) == {1000} and set(with_ci["ci_seed"]) == {0}
    deltas = pd.read_csv(zoo_subset / "deltas.csv")
    assert list(deltas.columns) == ["model", "column", "kind", "metric", "delta_pp", "ci_low_pp", "ci_high_pp",
                                    "p_value", "test", "p_holm", "significant"]
    tested = deltas[deltas["kind"] == "benchmark"].set_index(["model", "column"])
    twin = tested.loc["twin"]
    assert (twin[["delta_pp", "ci_low_pp", "ci_high_pp"]] == 0).all().all() and (twin["p_value"] == 1).all()
    silc = tested.loc["silc-vit-tiny-synth"]
    assert silc.at["synthscenes-zeroshot", "test"] == "McNemar exact"
    assert silc.at["synthscenes-retrieval", "test"] == "paired bootstrap"
    assert silc.at["synthscenes-zeroshot", "significant"]  # about -25 pp on 1,000 images
    assert (silc["p_holm"] >= silc["p_value"]).all()
    accuracy = {model: json.loads((zoo_subset / "records" / model / "synthscenes-zeroshot.json").read_text())
                ["metrics"]["acc1"] for model in ("clip-vit-tiny-synth", "silc-vit-tiny-synth")}
    delta = 100 * (accuracy["silc-vit-tiny-synth"] - accuracy["clip-vit-tiny-synth"])
    assert silc.at["synthscenes-zeroshot", "delta_pp"] == pytest.approx(delta)
    markdown = (zoo_subset / "leaderboard.md").read_text()
    assert f"{100 * accuracy['clip-vit-tiny-synth']:.2f} ± " in markdown and f"{delta:.2f}*)" in markdown
    assert "Holm's correction across the 3 benchmarks" in markdown
    assert "## Paired differences to clip-vit-tiny-synth" in markdown
    # the same folder with --resamples 0: no interval anywhere
    assert run_cli(capsys, "report", zoo_subset, "--format", "csv,md", "--resamples", "0")[0] == 0
    assert pd.read_csv(zoo_subset / "results.csv")["ci_low"].isna().all()
    assert "±" not in (zoo_subset / "leaderboard.md").read_text()


def test_html_error_bars_come_from_the_intervals(zoo_subset):
    from silc_eval.report.build import build_report
    from silc_eval.report.intervals import IntervalSettings, bootstrap_folder
    from silc_eval.report.plots import error_bars
    from silc_eval.report.records import load_result_records

    records = load_result_records(zoo_subset)
    report = build_report(records, benchmark_order=["synthscenes-zeroshot"])
    report.bootstrap = bootstrap_folder(zoo_subset, records, IntervalSettings(resamples=200))
    interval = report.interval("silc-vit-tiny-synth", "synthscenes-zeroshot")
    value = report.scores.at["silc-vit-tiny-synth", "synthscenes-zeroshot"]
    (low,), (high,) = error_bars(report, "silc-vit-tiny-synth", ["synthscenes-zeroshot"], [value])
    assert low == pytest.approx(value - 100 * interval.low) and high == pytest.approx(100 * interval.high - value)
    assert error_bars(report, "silc-vit-tiny-synth", ["classification"], [value]) is None  # a group mean


def test_compare_two_runs_and_its_user_errors(runs, tmp_path, capsys):
    table = tmp_path / "compare.csv"
    code, out, err = run_cli(capsys, "compare", runs["before"], runs["after"], "--csv", table)
    assert code == 0, err
    assert "+10.00" in out and "McNemar exact" in out and "Holm-corrected" in out
    row = pd.read_csv(table).iloc[0]
    assert row["delta_pp"] == pytest.approx(10.0) and row["significant"] and row["ci_low_pp"] > 0
    assert row["p_value"] == pytest.approx(binomtest(100, 100, 0.5).pvalue, rel=1e-5)
    # different images: one line, exit 2
    other = tmp_path / "other"
    write_run_record(other, "m", "cls", "zeroshot_classification", correctness_samples(planted(0)[0]),
                     fingerprint="0" * 16)
    code, _, err = run_cli(capsys, "compare", runs["before"], other)
    assert_one_line_error(code, err, "cannot pair", "fingerprint")
    fewer = tmp_path / "fewer"
    write_run_record(fewer, "m", "cls", "zeroshot_classification", correctness_samples(planted(0)[0][:900]))
    code, _, err = run_cli(capsys, "compare", runs["before"], fewer)
    assert_one_line_error(code, err, "with 900 images vs", "with 1000")
    # a missing sidecar, a bad folder, nothing in common
    (runs["after"] / "records" / "m" / "cls.samples.npz").unlink()
    code, _, err = run_cli(capsys, "compare", runs["before"], runs["after"])
    assert_one_line_error(code, err, "cls.samples.npz is missing")
    code, _, err = run_cli(capsys, "compare", runs["before"], tmp_path / "nowhere")
    assert_one_line_error(code, err, "not found")
    elsewhere = tmp_path / "elsewhere"
    write_run_record(elsewhere, "n", "cls", "zeroshot_classification", correctness_samples(planted(0)[0]))
    code, _, err = run_cli(capsys, "compare", runs["before"], elsewhere)
    assert_one_line_error(code, err, "share no (model, benchmark)")
    for option, value in (("--level", "95"), ("--resamples", "-1"), ("--bootstrap-seed", "-2")):
        code, _, err = run_cli(capsys, "compare", runs["before"], runs["noisy"], option, value)
        assert_one_line_error(code, err, option)


def test_check_against_a_reference_run_is_noise_aware(runs, capsys):
    # 0.5 pp worse on 1,000 images: beyond the 0.3 pp tolerance, but its paired interval reaches above -0.3 pp
    code, out, _ = run_cli(capsys, "check", runs["noisy"], "--reference-run", runs["before"])
    assert code == 0 and "check passed" in out and "0 regressions" in out, out
    code, out, _ = run_cli(capsys, "check", runs["noisy"], "--reference", write_reference(runs, "before"))
    assert code == 1 and "REGRESSION" in out  # the plain comparison fails it ...
    assert "result 95% CI %" in out and "[" in out  # ... and shows the score's own interval
    # 10 pp worse: a regression whose whole interval lies below -0.3 pp
    code, out, _ = run_cli(capsys, "check", runs["before"], "--reference-run", runs["after"])
    assert code == 1 and "REGRESSION" in out and "delta 95% CI pp" in out
    code, out, _ = run_cli(capsys, "check", runs["after"], "--reference-run", runs["before"])
    assert code == 0 and "improvement" in out
    code, out, _ = run_cli(capsys, "check", runs["before"], "--reference-run", runs["before"])
    assert code == 0 and "0 regressions" in out


def write_reference(runs, name: str) -> Path:
    """Write the metrics of a run's record as a reference CSV; returns its path."""
    record = json.loads((runs[name] / "records" / "m" / "cls.json").read_text())
    path = runs[name].parent / f"{name}-reference.csv"
    rows = [f"m,cls,{metric},{'nan' if v is None else v}" for metric, v in record["metrics"].items()]
    path.write_text("model,benchmark,metric,value\n" + "\n".join(rows) + "\n")
    return path


def test_check_reference_run_user_errors(runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "check", runs["after"], "--reference-run", tmp_path / "nowhere")
    assert_one_line_error(code, err, "not found")
    code, _, err = run_cli(capsys, "check", runs["after"], "--reference-run", runs["before"], "--published")
    assert code == 2 and "Traceback" not in err
    record = runs["before"] / "records" / "m" / "cls.json"
    data = json.loads(record.read_text())
    data["dataset"]["fingerprint"] = "0" * 16
    record.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "check", runs["after"], "--reference-run", runs["before"])
    assert_one_line_error(code, err, "cannot pair", "the same images")
