"""The linear segmentation probe solved as a convex problem: its loss and gradient against autograd through
F.interpolate + F.cross_entropy, its optimum against scikit-learn's LogisticRegression, and its convergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from silc_eval.machinery.convex_probe import (
    StandardizedLinear,
    fit_linear_probe,
    nearest_loss_and_gradient,
    patch_label_counts,
    token_blocks,
    token_moments,
    upsampled_loss_and_gradient,
)
from silc_eval.machinery.heads import upsampled_cross_entropy
from silc_eval.machinery.windows import bilinear_matrix


def problem(seed: int, windows=6, grid=4, size=16, dim=5, classes=3, ignore=True):
    """Return (features (N, grid, grid, dim) float16, labels (N, size, size) uint8) whose labels follow the
    features' first dims (learnable, not separable), with some pixels ignored."""
    generator = torch.Generator().manual_seed(seed)
    features = (torch.randn(windows, grid, grid, dim, generator=generator) * 3 + 1).half()
    scores = F.interpolate(features.float()[..., :classes].permute(0, 3, 1, 2), size=size, mode="bilinear",
                           align_corners=False)
    scores = scores + torch.randn(scores.shape, generator=generator)
    labels = scores.argmax(1).to(torch.uint8)
    if ignore:
        labels[:, :2, :3] = 255
    return features, labels


def test_bilinear_matrix_is_what_interpolate_computes():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    rows, cols = bilinear_matrix(11, 5), bilinear_matrix(13, 7)
    expected = F.interpolate(x, size=(11, 13), mode="bilinear", align_corners=False)
    assert torch.allclose(rows @ x @ cols.T, expected, atol=1e-12)


def test_loss_and_gradient_equal_autograd_through_interpolate_and_cross_entropy():
    features, labels = problem(0)
    mean, std = token_moments(features)
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(3, 5, generator=generator, requires_grad=True)
    bias = torch.randn(3, generator=generator, requires_grad=True)
    probe_logits = StandardizedLinear(mean, std, torch.zeros(3, 5), torch.zeros(3))
    probe_logits.weight, probe_logits.bias = torch.nn.Parameter(weight), torch.nn.Parameter(bias)
    upsampled = F.interpolate(probe_logits(features), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    expected = F.cross_entropy(upsampled, labels.long(), ignore_index=255)
    expected.backward()
    with torch.no_grad():
        loss, grad_weight, grad_bias = upsampled_loss_and_gradient(weight, bias, features, labels, mean, std)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(grad_weight, probe_logits.weight.grad, atol=1e-6)
    assert torch.allclose(grad_bias, probe_logits.bias.grad, atol=1e-6)


def test_chunks_do_not_change_the_loss(monkeypatch):
    features, labels = problem(2, windows=9)
    mean, std = token_moments(features)
    weight, bias = torch.randn(3, 5), torch.randn(3)
    whole = upsampled_loss_and_gradient(weight, bias, features, labels, mean, std)
    monkeypatch.setattr("silc_eval.machinery.convex_probe.LOGITS_PER_CHUNK", 3 * 16 * 16 * 2)  # 2 windows a chunk
    chunked = upsampled_loss_and_gradient(weight, bias, features, labels, mean, std)
    assert chunked[0] == pytest.approx(whole[0], rel=1e-6)
    assert torch.allclose(chunked[1], whole[1], atol=1e-6) and torch.allclose(chunked[2], whole[2], atol=1e-6)


def test_moments_match_numpy_and_a_constant_dimension_gets_unit_std():
    features, _ = problem(3)
    features[..., 4] = 2.5
    mean, std = token_moments(features, chunk=4)
    flat = features.reshape(-1, 5).double().numpy()
    assert np.allclose(mean.numpy(), flat.mean(0), atol=1e-5)
    assert np.allclose(std.numpy()[:4], flat.std(0)[:4], atol=1e-5) and std[4] == 1.0


def test_optimum_equals_scikit_learn_logistic_regression_when_labels_are_at_patch_resolution():
    # Labels at the patch grid make the upsampling the identity: the probe is then multinomial logistic
    # regression on standardised tokens, and (mean loss + l2/2 ||W||^2) is sklearn's objective divided
    # by the number of pixels with C = 1 / (l2 * pixels).
    features, labels = problem(4, windows=40, grid=6, size=6, ignore=False)
    l2 = 1e-2
    probe, fit = fit_linear_probe(features, labels, 3, l2, max_iterations=500, tolerance=2e-5, progress=False)
    assert fit.converged and fit.gradient_norm < 1e-4
    mean, std = token_moments(features)
    tokens = ((features.float() - mean) / std).reshape(-1, 5).numpy().astype(np.float64)
    targets = labels.reshape(-1).numpy()
    reference = LogisticRegression(C=1.0 / (l2 * len(targets)), tol=1e-12, max_iter=10_000).fit(tokens, targets)
    assert np.allclose(probe.weight.detach().numpy(), reference.coef_, atol=2e-4)
    assert np.allclose(probe.bias.detach().numpy(), reference.intercept_ - reference.intercept_.mean(), atol=2e-4)
    assert abs(probe.bias.sum().item()) < 1e-4  # softmax's bias is free up to a constant; from zero it stays centred
    logits = probe(features).permute(0, 2, 3, 1).reshape(-1, 3).detach().numpy()
    assert (logits.argmax(1) == reference.predict(tokens)).all()


def test_the_solver_reaches_the_optimum_from_any_start_and_stops_when_told():
    features, labels = problem(5, windows=20)
    probe, fit = fit_linear_probe(features, labels, 3, 1e-3, max_iterations=300, tolerance=2e-5, progress=False)
    assert fit.converged and fit.iterations < 300
    with torch.no_grad():
        _, grad_weight, grad_bias = upsampled_loss_and_gradient(probe.weight, probe.bias, features, labels,
                                                                probe.mean, probe.std)
    assert float((grad_weight + 1e-3 * probe.weight.detach()).abs().max()) <= 2e-5
    assert float(grad_bias.abs().max()) <= 2e-5
    # Strictly convex: a random start does no better than the found minimum.
    objective = fit.objective
    for seed in range(3):
        start = torch.randn(3, 5, generator=torch.Generator().manual_seed(seed))
        loss, _, _ = upsampled_loss_and_gradient(start, torch.zeros(3), features, labels, probe.mean, probe.std)
        assert loss + 0.5e-3 * float((start * start).sum()) > objective
    short, short_fit = fit_linear_probe(features, labels, 3, 1e-3, max_iterations=2, tolerance=2e-5, progress=False)
    assert short_fit.iterations <= 2 and not short_fit.converged and short_fit.objective > objective


@pytest.mark.parametrize("grid, size", [(4, 16), (3, 16), (5, 7)])
def test_nearest_problem_equals_autograd_through_nearest_interpolate(grid, size):
    # The warm start's problem: logits upsampled by torch's own nearest interpolation, on grids that divide the
    # window and grids that do not.
    features, labels = problem(6, grid=grid, size=size)
    mean, std = token_moments(features)
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(3, 5, generator=generator, requires_grad=True)
    bias = torch.randn(3, generator=generator, requires_grad=True)
    logits = (((features.float() - mean) / std) @ weight.T + bias).permute(0, 3, 1, 2)
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="nearest")
    expected = F.cross_entropy(upsampled, labels.long(), ignore_index=255)
    expected.backward()
    counts = patch_label_counts(labels, (grid, grid), 3, chunk=4)
    assert counts.sum() == (labels != 255).sum()
    # held as one block, and streamed chunk by chunk when over the memory budget: the same loss and gradient
    for max_bytes in (1 << 30, 0):
        blocks = token_blocks(features, counts, mean, std, "cpu", max_bytes=max_bytes, chunk=4)
        with torch.no_grad():
            loss, grad_weight, grad_bias = nearest_loss_and_gradient(weight, bias, blocks)
        assert loss == pytest.approx(expected.item(), rel=1e-5)
        assert torch.allclose(grad_weight, weight.grad, atol=1e-6) and torch.allclose(grad_bias, bias.grad, atol=1e-6)


def test_warm_start_reaches_the_same_optimum_in_fewer_passes_over_the_pixels():
    features, labels = problem(7, windows=30)
    fits = {start: fit_linear_probe(features, labels, 3, 1e-3, max_iterations=300, tolerance=1e-5, progress=False,
                                    warm_start=start) for start in ("zero", "nearest")}
    (cold, cold_fit), (warm, warm_fit) = fits["zero"], fits["nearest"]
    assert cold_fit.converged and warm_fit.converged
    assert cold_fit.warm_start_iterations == 0 and warm_fit.warm_start_iterations > 0
    assert warm_fit.evaluations < cold_fit.evaluations
    assert warm_fit.objective == pytest.approx(cold_fit.objective, abs=1e-7)
    assert torch.allclose(warm.weight, cold.weight, atol=5e-3) and torch.allclose(warm.bias, cold.bias, atol=5e-3)
    with pytest.raises(ValueError, match="warm_start"):
        fit_linear_probe(features, labels, 3, 1e-3, 10, 1e-5, progress=False, warm_start="random")


def test_upsampled_cross_entropy_stays_finite_on_confident_wrong_logits():
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 0] = 500.0  # every pixel says class 0 with certainty; the labels say class 2
    labels = torch.full((1, 4, 4), 2, dtype=torch.long)
    total, count, gradient = upsampled_cross_entropy(logits, labels)
    assert int(count) == 16 and float(total) == pytest.approx(16 * 500.0, rel=1e-6)
    assert torch.isfinite(gradient).all() and gradient[:, 0].sum() == pytest.approx(1.0, rel=1e-5)
