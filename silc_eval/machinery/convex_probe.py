"""The linear segmentation probe as a convex problem, solved to its optimum (PROTOCOLS.md section 6).

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

from silc_eval.machinery.heads import upsampled_cross_entropy

LOGITS_PER_CHUNK = 1_000_000  # upsampled logits held at once (windows x classes x pixels): ~4 MB, cache-sized


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


@dataclass(frozen=True)
class ProbeFit:
    """How the solver ended: iterations, loss evaluations, final objective, the gradient's norm and largest entry."""

    iterations: int
    evaluations: int
    objective: float
    gradient_norm: float
    gradient_max: float
    converged: bool


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


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
                     max_iterations: int, tolerance: float, device="cpu", progress: bool = True
                     ) -> tuple[StandardizedLinear, ProbeFit]:
    """Return (the probe minimising the upsampled cross-entropy + l2/2 ||W||^2 on features (N, gh, gw, D) and
    labels (N, h, w), how the solver ended).

    L-BFGS from W = 0, b = 0 (history 20, strong Wolfe line search) stops after max_iterations or
    once the gradient's largest entry is below tolerance (converged).
    """
    mean, std = token_moments(features)
    weight = torch.zeros(num_classes, features.shape[-1], device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iterations, history_size=20,
                                  tolerance_grad=tolerance, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    bar = tqdm(total=max_iterations, disable=not progress, desc="linear probe (L-BFGS)", leave=False)
    evaluations = 0

    def objective() -> tuple[float, torch.Tensor, torch.Tensor]:
        loss, grad_weight, grad_bias = upsampled_loss_and_gradient(weight, bias, features, labels, mean, std)
        return loss + 0.5 * l2 * float((weight * weight).sum()), grad_weight + l2 * weight, grad_bias

    def closure() -> torch.Tensor:
        nonlocal evaluations
        with torch.no_grad():
            value, weight.grad, bias.grad = objective()
        evaluations += 1
        bar.update(1)
        return torch.tensor(value)

    optimizer.step(closure)
    bar.close()
    with torch.no_grad():
        value, grad_weight, grad_bias = objective()
    gradient = torch.cat([grad_weight.flatten(), grad_bias])
    largest = float(gradient.abs().max())
    fit = ProbeFit(int(optimizer.state[weight].get("n_iter", 0)), evaluations, value, float(gradient.norm()), largest,
                   largest <= tolerance)
    probe = StandardizedLinear(mean.to(device), std.to(device), weight.detach(), bias.detach())
    return probe.eval(), fit
