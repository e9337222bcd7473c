"""Linear probe and few-shot: parity with clip-benchmark, sklearn and numpy; sampling; shortfalls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import evaluate_task
from silc_eval.core.errors import UserError
from silc_eval.data.formats import build_split
from silc_eval.features import cache as feature_cache
from silc_eval.machinery import probes as pt
from silc_eval.tasks import TASKS, linear_probe


def gaussian_features(num_classes: int, per_class: int, dim: int, seed: int, spread: float = 1.0):
    """Return (x (N, D) float32, y (N,) int64): class means on a sphere of radius 2.5 plus unit noise, shuffled."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim))
    means = 2.5 * means / np.linalg.norm(means, axis=1, keepdims=True)
    y = np.repeat(np.arange(num_classes), per_class)
    x = means[y] + spread * rng.normal(size=(len(y), dim))
    order = rng.permutation(len(y))
    return torch.tensor(x[order], dtype=torch.float32), torch.tensor(y[order])


# ----------------------------------------------------------------------------- clip-benchmark parity

@pytest.fixture
def cb_linear_probe(monkeypatch, cb_zeroshot_classification, tmp_path):
    """clip_benchmark.metrics.linear_probe.evaluate runnable on CPU, reading features we write for it.

    Its code calls .cuda() and asserts device == 'cuda': .cuda() becomes a no-op, DataParallel
    a pass-through, and its train/infer helpers get device 'cpu'. Every sampling, search and
    training step stays clip_benchmark's own code.
    """
    from clip_benchmark.metrics import linear_probe as lp

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.nn, "DataParallel", lambda module, device_ids=None: module)
    train, infer = lp.train, lp.infer
    monkeypatch.setattr(lp, "train", lambda loader, d, c, wd, lr, epochs, amp, device, seed:
                        train(loader, d, c, wd, lr, epochs, False, "cpu", seed))
    monkeypatch.setattr(lp, "infer", lambda model, loader, amp, device: infer(model, loader, False, "cpu"))

    def run(x_train, y_train, x_val, y_val, x_test, y_test, fewshot_k, seed):
        feature_dir = tmp_path / "cb_features" / f"m{fewshot_k}_{seed}"
        feature_dir.mkdir(parents=True)
        for split, x, y in (("train", x_train, y_train), ("val", x_val, y_val), ("test", x_test, y_test)):
            torch.save(x, feature_dir / f"features_{split}.pt")
            torch.save(y, feature_dir / f"targets_{split}.pt")
        torch.manual_seed(seed)  # what clip_benchmark's CLI does before evaluating
        return lp.evaluate(torch.nn.Identity(), [None], [None], fewshot_k, 64, 0, 0.1, 10, feature_dir.name, seed,
                           str(feature_dir.parent), "cuda", val_dataloader=[None], normalize=True, amp=False)

    return run


def clip_benchmark_order(y_train: torch.Tensor, fewshot_k: int, seed: int) -> torch.Tensor:
    """The training rows clip_benchmark uses: a global permutation, keeping the first k per class."""
    torch.manual_seed(seed)
    perm, counts, kept = torch.randperm(len(y_train)).tolist(), {}, []
    for p in perm:
        c = int(y_train[p])
        if fewshot_k < 0 or counts.get(c, 0) < fewshot_k:
            counts[c] = counts.get(c, 0) + 1
            kept.append(p)
    return torch.tensor(kept)


@pytest.mark.parametrize("fewshot_k, seed", [(-1, 0), (5, 1)])
def test_logistic_probe_matches_clip_benchmark(cb_linear_probe, fewshot_k, seed):
    x, y = gaussian_features(5, 40, 12, seed=seed + 10, spread=1.2)
    x_train, y_train, x_val, y_val, x_test, y_test = x[:120], y[:120], x[120:150], y[120:150], x[150:], y[150:]
    reference = cb_linear_probe(x_train, y_train, x_val, y_val, x_test, y_test, fewshot_k, seed)

    rows = clip_benchmark_order(y_train, fewshot_k, seed)
    fit_x, fit_y = x_train[rows], y_train[rows]
    decay, _ = pt.search_weight_decay(fit_x, fit_y, x_val, y_val, 5, seed)
    assert decay == reference["weight_decay"]
    if fewshot_k < 0:
        fit_x, fit_y = torch.cat([fit_x, x_val]), torch.cat([fit_y, y_val])
    w, b = pt.train_logistic(fit_x, fit_y, 5, [decay], seed)
    assert pt.top1(pt.predict(w, b, x_test), y_test).item() == pytest.approx(reference["lp_acc1"], abs=1e-6)


def test_training_matches_clip_benchmark_train_weights(cb_linear_probe):
    """Same seed, same data: our stacked AdamW gives clip_benchmark's nn.Linear weights, for each decay."""
    from clip_benchmark.metrics import linear_probe as lp

    x, y = gaussian_features(4, 30, 8, seed=3)
    loader = torch.utils.data.DataLoader(lp.FeatureDataset(x, y), batch_size=64, shuffle=True)
    decays = [1e-6, 0.1, 3.0]
    w, b = pt.train_logistic(x, y, 4, decays, seed=7)
    for m, decay in enumerate(decays):
        model = lp.train(loader, 8, 4, decay, 0.1, 10, False, "cpu", 7)
        assert torch.allclose(w[m], model.weight.detach().T, atol=1e-5)
        assert torch.allclose(b[m], model.bias.detach(), atol=1e-5)


# ----------------------------------------------------------------------------- sklearn and numpy parity

def test_logistic_probe_accuracy_within_one_point_of_sklearn():
    from sklearn.linear_model import LogisticRegression

    x, y = gaussian_features(6, 400, 16, seed=5, spread=1.3)
    x_tr, y_tr, x_te, y_te = x[:1200], y[:1200], x[1200:], y[1200:]
    ours = linear_probe.probe_metrics(x_tr, y_tr, x_te, y_te, 6, {**linear_probe.TASK.default_params, "shots": ["full"],
                                                                  "seeds": [0]})
    sk = LogisticRegression(max_iter=2000).fit(x_tr.numpy(), y_tr.numpy()).score(x_te.numpy(), y_te.numpy())
    assert 0.6 < sk < 0.99  # a problem where the probes can disagree
    assert abs(ours["acc1_full_mean"] - sk) <= 0.01


@pytest.mark.parametrize("n_per_class, dim", [(3, 20), (25, 6)])  # dual (N < D+1) and primal forms
def test_ridge_matches_numpy_least_squares(n_per_class, dim):
    x, y = gaussian_features(4, n_per_class, dim, seed=dim)
    x_test, _ = gaussian_features(4, 10, dim, seed=dim + 1)
    fit = pt.ridge_fit(x, y, 4, l2_reg=2.0 ** 10)
    xn, l2 = x.double().numpy(), 2.0 ** 10
    mean, std = xn.mean(axis=0), xn.std(axis=0) + 1e-5
    design = np.hstack([(xn - mean) / std, np.full((len(xn), 1), 100.0)])
    targets = np.where(np.arange(4)[None] == y.numpy()[:, None], 1.0, -1.0)
    stacked = np.vstack([design, math.sqrt(l2) * np.eye(design.shape[1])])
    padded = np.vstack([targets, np.zeros((design.shape[1], 4))])
    expected, *_ = np.linalg.lstsq(stacked, padded, rcond=None)
    assert np.allclose(fit[0].numpy(), expected, atol=1e-8)
    test_design = np.hstack([(x_test.double().numpy() - mean) / std, np.full((len(x_test), 1), 100.0)])
    assert np.allclose(pt.ridge_predict(fit, x_test).numpy(), test_design @ expected, atol=1e-8)


# ----------------------------------------------------------------------------- sampling

def test_kshot_sampling_is_seeded_per_class_and_nested():
    y = np.repeat(np.arange(3), [7, 9, 12])[np.random.default_rng(0).permutation(28)]
    a = pt.sample_kshot(y, 3, 5, seed=4)
    assert np.array_equal(a, pt.sample_kshot(y, 3, 5, seed=4))
    assert not np.array_equal(a, pt.sample_kshot(y, 3, 5, seed=5))
    assert [int((y[a] == c).sum()) for c in range(3)] == [5, 5, 5] and len(set(a)) == 15
    assert set(pt.sample_kshot(y, 3, 2, seed=4)) <= set(a)
    # per class: changing one class's images does not change the other classes' draws
    assert np.array_equal(pt.class_permutations(y, 3, 4)[0], pt.class_permutations(y, 3, 4)[0])


def test_kshot_sample_never_touches_the_validation_carve():
    y = np.repeat(np.arange(4), 20)
    for seed in range(3):
        train, val = pt.carve_validation(y, 4, 0.2, seed)
        assert not set(train) & set(val) and len(train) + len(val) == 80
        assert [int((y[val] == c).sum()) for c in range(4)] == [4, 4, 4, 4]
        assert set(pt.sample_kshot(y, 4, 16, seed, pool=train)) <= set(train)
        with pytest.raises(pt.InsufficientShots):
            pt.sample_kshot(y, 4, 17, seed, pool=train)


def test_fewshot_training_rows_come_only_from_the_train_part(monkeypatch):
    """Every row a few-shot probe trains on is a k-shot train row; validation rows only score decays."""
    x, y = gaussian_features(3, 20, 5, seed=2)
    x[:, 0] = torch.arange(len(x), dtype=torch.float32) * 1000  # row id, readable from the features
    seen = []
    train = pt.train_logistic
    monkeypatch.setattr(pt, "train_logistic", lambda fx, fy, *a, **k: seen.append((fx[:, 0] / 1000).round().long()) or train(fx, fy, *a, **k))
    params = {**linear_probe.TASK.default_params, "shots": [2], "seeds": [1], "epochs": 1}
    linear_probe.probe_metrics(x, y, x[:6], y[:6], 3, params)
    train_part, val_part = pt.carve_validation(y.numpy(), 3, 0.2, 1)
    kshot = set(pt.sample_kshot(y.numpy(), 3, 2, 1, pool=train_part).tolist())
    rows = set(torch.cat(seen).tolist())
    assert rows == kshot and not rows & set(val_part.tolist())


# ----------------------------------------------------------------------------- shortfalls and params

def test_insufficient_shots_are_marked_not_run(capsys):
    x, y = gaussian_features(3, 6, 4, seed=1)
    metrics = linear_probe.probe_metrics(x, y, x, y, 3, {**linear_probe.TASK.default_params, "protocol": "ridge",
                                                        "shots": [1, 5, 10], "seeds": [0, 1]})
    assert math.isnan(metrics["acc1_10shot_mean"]) and math.isnan(metrics["acc1_10shot_std"])
    assert 0 <= metrics["acc1_5shot_mean"] <= 1 and 0 <= metrics["acc1_1shot_mean"] <= 1
    err = capsys.readouterr().err
    assert "10shot not run" in err and "fewer than 10" in err and "5shot not run" not in err


def test_nothing_runnable_is_a_user_error():
    x, y = gaussian_features(3, 4, 4, seed=1)
    with pytest.raises(UserError, match="could not run any"):
        linear_probe.probe_metrics(x, y, x, y, 3, {**linear_probe.TASK.default_params, "shots": [25], "seeds": [0]})


@pytest.mark.parametrize("bad", [{"protocol": "svm"}, {"shots": [0]}, {"shots": "5"}, {"seeds": []},
                                 {"fewshot_weight_decay": "auto"}])
def test_bad_params_are_user_errors(bad):
    with pytest.raises(UserError, match="linear_probe"):
        linear_probe.TASK.protocol(bad, "bench.yaml")


# ----------------------------------------------------------------------------- the task end to end

def test_task_runs_on_a_model_with_cached_features(tiny_model, tiny_classification_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("SILC_EVAL_CACHE", str(tmp_path / "cache"))
    feature_cache.reset_stats()
    declaration = {"name": "tiny", "source": "data-root", "format": "imagefolder", "root": "val", "train_root": "val",
                   "classnames": "classnames.txt", "templates": "templates.txt"}
    dataset = {split: build_split(declaration, tiny_classification_dir.root, tiny_model.preprocess, split)
               for split in ("train", "eval")}
    assert TASKS["linear_probe"] is linear_probe.TASK
    params = {**linear_probe.TASK.default_params, "shots": ["full", 1], "seeds": [0, 1], "epochs": 2}
    first = evaluate_task(linear_probe, tiny_model, dataset, params, progress=False)
    assert feature_cache.STATS["images_computed"] == 48  # train and test split, once each
    ridge = evaluate_task(linear_probe, tiny_model, dataset, {**params, "protocol": "ridge", "shots": ["full", 1, 2]},
                                  progress=False)
    again = evaluate_task(linear_probe, tiny_model, dataset, params, progress=False)
    assert feature_cache.STATS["images_computed"] == 48
    assert first == again
    assert set(first) == {f"acc1_{s}_{m}" for s in ("full", "1shot") for m in ("mean", "std")}
    assert all(0 <= v <= 1 for v in first.values())
    assert all(0 <= ridge[f"acc1_{s}_mean"] <= 1 for s in ("full", "1shot", "2shot"))


def test_fitted_probes_are_served_from_the_cache_exactly(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SILC_EVAL_CACHE", str(tmp_path / "cache"))
    x, y = gaussian_features(3, 6, 4, seed=1)
    x_te, y_te = gaussian_features(3, 5, 4, seed=2)
    params = {**linear_probe.TASK.default_params, "shots": ["full", 1, 10], "seeds": [0, 1], "epochs": 2}
    fits = []
    original = linear_probe.probe_outcomes
    monkeypatch.setattr(linear_probe, "probe_outcomes", lambda *a, **k: fits.append(1) or original(*a, **k))

    first = linear_probe.cached_outcomes(x, y, x_te, y_te, 3, params)
    assert "10shot not run" in capsys.readouterr().err
    again = linear_probe.cached_outcomes(x, y, x_te, y_te, 3, params)
    assert len(fits) == 1 and "10shot not run" in capsys.readouterr().err  # the shortfall is said on a hit too
    fresh = original(x, y, x_te, y_te, 3, params)
    for key in ("target", "predictions", "shots", "seeds"):
        assert np.array_equal(first[key], fresh[key]) and np.array_equal(again[key], fresh[key])

    linear_probe.cached_outcomes(x, y, x_te, y_te, 3, {**params, "seeds": [0]})  # another parameter
    linear_probe.cached_outcomes(x + 1e-3, y, x_te, y_te, 3, params)  # other features
    monkeypatch.setattr(linear_probe, "FIT_CODE_VERSION", linear_probe.FIT_CODE_VERSION + 1)
    linear_probe.cached_outcomes(x, y, x_te, y_te, 3, params)
    assert len(fits) == 4
    with feature_cache.switched_off():
        linear_probe.cached_outcomes(x, y, x_te, y_te, 3, params)
    assert len(fits) == 5
