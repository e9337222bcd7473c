"""The linear segmentation probe as a convex problem, solved to its optimum (benchmarks/PROTOCOLS.md section 6).

The probe standardises each frozen patch-token dimension (mean and standard deviation over
every training token: what BatchNorm's running statistics estimate) and maps it to class
logits with one affine layer (a 1x1 convolution). Its loss is the mean cross-entropy (ignore
255) of those logits upsampled bilinearly to each window's labels, plus (l2 / 2) * ||W||^2
on the weights (not the bias): scikit-learn's LogisticRegression objective divided by the
number of pixels, with C = 1 / (l2 * pixels). Bilinear upsampling is linear, so the loss is
convex in (W, b) and, with l2 > 0, has one minimiser: the probe does not depend on a seed,
and L-BFGS (strong Wolfe line search) from zero reaches it in tens of passes over the cached
windows instead of thousands of stochastic steps.

Each pass computes the loss and its exact gradient without autograd, a chunk of windows at a
time: the logits' upsampled cross-entropy and its gradient (heads.upsampled_cross_entropy, the
decoder's loss too), then the gradient of W and b through the 1x1 layer.

A pass over every pixel is the whole cost, so by default (warm_start "nearest") L-BFGS starts from
the solution of a cheaper neighbour problem: the same probe with logits upsampled by nearest
neighbour instead of bilinearly. That loss needs only each patch's label counts, so a pass costs
one patch's worth instead of (h / gh) x (w / gw) pixels' (64x fewer on 8x8 patches), and its
solution lies close to the bilinear one: the exact problem then converges in far fewer passes.
The end point is the same problem's, to the same tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
from tqdm import tqdm

from silc_eval.core.labels import IGNORE_INDEX
from silc_eval.machinery.heads import upsampled_cross_entropy

LOGITS_PER_CHUNK = 1_000_000  # upsampled logits held at once (windows x classes x pixels): ~4 MB, cache-sized
WARM_START_BYTES = 1 << 30  # the warm start holds a float32 copy of the standardised tokens up to this size


class StandardizedLinear(nn.Module):
    """Standardise patch tokens (fixed mean and std) then a 1x1 affine map: (B, gh, gw, D) -> (B, C, gh, gw)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.weight = nn.Parameter(weight.float())
        self.bias = nn.Parameter(bias.float())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return the class logits (B, C, gh, gw) of patch tokens (B, gh, gw, D)."""
        standardized = (tokens.float() - self.mean) / self.std
        return (standardized @ self.weight.T + self.bias).permute(0, 3, 1, 2)


WARM_STARTS = ("nearest", "zero")


@dataclass(frozen=True)
class ProbeFit:
    """How the solver ended: L-BFGS iterations and loss evaluations on the exact (pixel) problem, final objective,
    the gradient's norm and largest entry, whether that is within tolerance, and the iterations spent on the
    nearest-upsampling warm start (0 without one)."""

    iterations: int
    evaluations: int
    objective: float
    gradient_norm: float
    gradient_max: float
    converged: bool
    warm_start_iterations: int = 0


def token_moments(features: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the per-dimension mean and standard deviation (float32, (D,)) of features (N, gh, gw, D).

    Accumulated in float64 a chunk of windows at a time; a constant dimension gets std 1.
    """
    dim = features.shape[-1]
    total, squares, count = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64), 0
    for start in range(0, features.shape[0], chunk):
        block = features[start:start + chunk].reshape(-1, dim).double()
        total += block.sum(0)
        squares += (block * block).sum(0)
        count += block.shape[0]
    mean = total / max(count, 1)
    variance = (squares / max(count, 1) - mean * mean).clamp(min=0)
    std = variance.sqrt()
    return mean.float(), torch.where(std > 1e-12, std, torch.ones_like(std)).float()


def upsampled_loss_and_gradient(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor,
                                labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
                                ) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Return (mean cross-entropy, its gradient for weight (C, D), for bias (C,)) of the standardised affine
    probe on every window of features (N, gh, gw, D) against labels (N, h, w), logits upsampled bilinearly
    (align_corners=False) to the labels; pixels labelled 255 do not count (no valid pixel: loss 0).

    Computed on weight's device, a chunk of windows at a time; features and labels may stay on the CPU.
    """
    device = weight.device
    windows, gh, gw, dim = features.shape
    height, width = labels.shape[-2:]
    classes = weight.shape[0]
    mean, std = mean.to(device), std.to(device)
    chunk = max(1, LOGITS_PER_CHUNK // (classes * height * width))
    grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for start in range(0, windows, chunk):
        tokens = ((features[start:start + chunk].to(device, torch.float32) - mean) / std).reshape(-1, gh * gw, dim)
        logits = (tokens @ weight.T + bias).transpose(1, 2).reshape(-1, classes, gh, gw)
        chunk_total, chunk_count, grad_logits = upsampled_cross_entropy(logits, labels[start:start + chunk].to(device),
                                                                        normalizer=1.0)
        total += chunk_total
        count += int(chunk_count)
        patch_delta = grad_logits.reshape(-1, classes, gh * gw)
        grad_weight += torch.einsum("bcp,bpd->cd", patch_delta, tokens)
        grad_bias += patch_delta.sum((0, 2))
    scale = 1.0 / max(count, 1)
    return float(total) * scale, grad_weight * scale, grad_bias * scale


def patch_label_counts(labels: torch.Tensor, grid: tuple[int, int], num_classes: int, chunk: int = 256
                       ) -> torch.Tensor:
    """Return per window, patch and class the number of valid pixels (float32, (N, gh * gw, C)) of labels (N, h, w)
    whose nearest patch (the cell holding the pixel, as nearest upsampling of a (gh, gw) grid picks it) is that
    patch; pixels labelled 255 do not count."""
    windows, height, width = labels.shape
    gh, gw = grid
    cell = ((torch.arange(height) * gh // height)[:, None] * gw + (torch.arange(width) * gw // width)[None]).flatten()
    counts = torch.zeros(windows, gh * gw * num_classes, dtype=torch.float32)
    for start in range(0, windows, chunk):
        block = labels[start:start + chunk].reshape(-1, height * width).long()
        valid = block != IGNORE_INDEX
        index = cell[None] * num_classes + torch.where(valid, block, 0)
        counts[start:start + chunk].scatter_add_(1, index, valid.float())
    return counts.reshape(windows, gh * gw, num_classes)


TokenBlocks = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def nearest_loss_and_gradient(weight: torch.Tensor, bias: torch.Tensor, blocks: TokenBlocks
                              ) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Return (mean cross-entropy, its gradient for weight (C, D), for bias (C,)) of the affine probe with logits
    upsampled by nearest neighbour, over blocks() of (standardised patch tokens (P, D), their pixel label counts
    (P, C)) (token_blocks).

    Every pixel of a patch's cell shares the patch's logits, so the pixel sum is a count-weighted sum per patch.
    """
    total, pixels_total = 0.0, 0.0
    grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
    for tokens, counts in blocks():
        pixels = counts.sum(1)
        log_probs = torch.log_softmax(tokens @ weight.T + bias, dim=1)
        total -= float((counts * log_probs).sum(dtype=torch.float64))
        pixels_total += float(pixels.sum())
        delta = log_probs.exp_().mul_(pixels[:, None]).sub_(counts)
        grad_weight += delta.T @ tokens
        grad_bias += delta.sum(0)
    scale = 1.0 / max(pixels_total, 1.0)
    return total * scale, grad_weight * scale, grad_bias * scale


def token_blocks(features: torch.Tensor, counts: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, device,
                 max_bytes: int = WARM_START_BYTES, chunk: int = 256) -> TokenBlocks:
    """Return a function yielding (standardised tokens (P, D) float32 on device, their label counts (P, C)) over every
    window of features (N, gh, gw, D) and counts (N, gh * gw, C): standardised once and held as one block when
    that fits in max_bytes, else standardised afresh chunk by chunk on every pass (no float32 copy of the cache)."""
    dim, classes = features.shape[-1], counts.shape[-1]
    mean, std = mean.to(device), std.to(device)

    def standardised(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        block = (features[start:start + chunk].to(device, torch.float32) - mean) / std
        return block.reshape(-1, dim), counts[start:start + chunk].to(device).reshape(-1, classes)

    starts = range(0, features.shape[0], chunk)
    if features.numel() * 4 > max_bytes:
        return lambda: (standardised(start) for start in starts)
    pieces = [standardised(start) for start in starts]
    held = (torch.cat([t for t, _ in pieces]), torch.cat([c for _, c in pieces]))
    return lambda: iter([held])


def _minimise(loss_and_gradient: Callable[[torch.Tensor, torch.Tensor], tuple[float, torch.Tensor, torch.Tensor]],
              weight: torch.Tensor, bias: torch.Tensor, l2: float, max_iterations: int, tolerance: float,
              bar: tqdm) -> tuple[int, int]:
    """Minimise loss_and_gradient(weight, bias) + l2/2 ||weight||^2 in place from the given weight and bias by
    L-BFGS (history 20, strong Wolfe); return (iterations, loss evaluations)."""
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iterations, history_size=20,
                                  tolerance_grad=tolerance, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        with torch.no_grad():
            value, weight.grad, bias.grad = loss_and_gradient(weight, bias)
            value += 0.5 * l2 * float((weight * weight).sum())
            weight.grad += l2 * weight
        evaluations += 1
        bar.update(1)
        return torch.tensor(value)

    optimizer.step(closure)
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    return int(optimizer.state[weight].get("n_iter", 0)), evaluations


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
                     max_iterations: int, tolerance: float, device="cpu", progress: bool = True,
                     warm_start: str = "nearest") -> tuple[StandardizedLinear, ProbeFit]:
    """Return (the probe minimising the upsampled cross-entropy + l2/2 ||W||^2 on features (N, gh, gw, D) and
    labels (N, h, w), how the solver ended).

    L-BFGS (history 20, strong Wolfe line search) starts from W = 0, b = 0 (warm_start "zero") or from the
    solution of the nearest-upsampling problem solved the same way from zero ("nearest"), and stops after
    max_iterations or once the exact gradient's largest entry is below tolerance (converged).
    """
    if warm_start not in WARM_STARTS:
        raise ValueError(f"warm_start must be one of {WARM_STARTS}, not {warm_start!r}")
    mean, std = token_moments(features)
    weight = torch.zeros(num_classes, features.shape[-1], device=device)
    bias = torch.zeros(num_classes, device=device)
    bar = tqdm(disable=not progress, desc="linear probe (L-BFGS)", unit="pass", leave=False)
    warm_iterations = 0
    if warm_start == "nearest":
        blocks = token_blocks(features, patch_label_counts(labels, features.shape[1:3], num_classes), mean, std,
                              device)
        warm_iterations, _ = _minimise(lambda w, b: nearest_loss_and_gradient(w, b, blocks),
                                       weight, bias, l2, max_iterations, tolerance, bar)
        del blocks
    iterations, evaluations = _minimise(
        lambda w, b: upsampled_loss_and_gradient(w, b, features, labels, mean, std),
        weight, bias, l2, max_iterations, tolerance, bar)
    bar.close()
    with torch.no_grad():
        value, grad_weight, grad_bias = upsampled_loss_and_gradient(weight, bias, features, labels, mean, std)
    value += 0.5 * l2 * float((weight * weight).sum())
    gradient = torch.cat([(grad_weight + l2 * weight).flatten(), grad_bias])
    largest = float(gradient.abs().max())
    fit = ProbeFit(iterations, evaluations, value, float(gradient.norm()), largest, largest <= tolerance,
                   warm_iterations)
    probe = StandardizedLinear(mean.to(device), std.to(device), weight, bias)
    return probe.eval(), fit
