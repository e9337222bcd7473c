"""Probes on frozen features (benchmarks/PROTOCOLS.md section 3): the pieces the linear_probe task assembles.

- Sampling: a stratified validation carve of the training split and k-shot samples, both by
  seeded per-class permutations (numpy default_rng(seed), one permutation per class in class
  order, as big_vision's few-shot evaluator draws them), so k-shot sets are nested in k.
- Logistic regression as CLIP_benchmark trains it: nn.Linear-style init, AdamW (betas 0.9/0.999,
  eps 1e-8, decoupled weight decay also on the bias), cosine schedule without warm-up stepped
  per batch, mean cross-entropy, lr 0.1, 10 epochs, batch 64, a fresh shuffle each epoch.
  With the same seed it draws the same random numbers as CLIP_benchmark's `train` (torch's
  default generator seeded by `seed`, the DataLoader's two draws per epoch), so runs agree.
  Several weight decays train at once as one stacked (M, D, C) model; they share the init and
  the batch order, exactly as separate runs with the same seed would.
- The weight-decay search of CLIP paper A.3 as CLIP_benchmark runs it (coarse 7 of
  logspace(-6, 2, 97), then left/peak/right with steps 8, 4, 2, 1; strict improvement, ties
  keep the earlier candidate; accuracy 0 everywhere keeps index 0).
- big_vision's closed-form ridge regression (+1/-1 targets, whitening with the training
  statistics, a constant bias feature of 100, L2 2^10).
Everything runs on the device of the features, CPU or CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

WD_GRID = np.logspace(-6, 2, num=97).tolist()
COARSE_INDICES = list(range(0, 97, 16))  # the 7 points of logspace(-6, 2, 7) inside WD_GRID
REFINE_STEPS = (8, 4, 2, 1)
BIAS_CONSTANT = 100.0
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


class InsufficientShots(Exception):
    """A class has fewer than k training examples; .shortfall maps class index -> available count."""

    def __init__(self, k: int, shortfall: dict[int, int]):
        self.k, self.shortfall = k, shortfall
        super().__init__(f"{len(shortfall)} class(es) have fewer than {k} training images: "
                         + ", ".join(f"class {c}: {n}" for c, n in sorted(shortfall.items())[:5]))


# ----------------------------------------------------------------------------- sampling

def class_permutations(targets: np.ndarray, num_classes: int, seed: int, pool: np.ndarray | None = None) -> list[np.ndarray]:
    """Return, per class in class order, the indices of pool (default: all) with that label, seeded-permuted."""
    targets = np.asarray(targets)
    pool = np.arange(len(targets)) if pool is None else np.asarray(pool)
    rng = np.random.default_rng(seed)
    return [rng.permutation(pool[targets[pool] == c]) for c in range(num_classes)]


def carve_validation(targets: np.ndarray, num_classes: int, proportion: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (train indices, validation indices): per class, round(proportion * count) images go to validation.

    Every class with at least two images keeps one in each part.
    """
    train, val = [], []
    for perm in class_permutations(targets, num_classes, seed):
        n_val = int(round(proportion * len(perm)))
        if len(perm) >= 2:
            n_val = min(max(n_val, 1), len(perm) - 1)
        val.append(perm[:n_val])
        train.append(perm[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def sample_kshot(targets: np.ndarray, num_classes: int, k: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
    """Return k indices per class (class order) drawn from pool by seeded per-class permutations.

    Raises InsufficientShots naming every class with fewer than k images in pool.
    """
    perms = class_permutations(targets, num_classes, seed, pool)
    shortfall = {c: len(p) for c, p in enumerate(perms) if len(p) < k}
    if shortfall:
        raise InsufficientShots(k, shortfall)
    return np.concatenate([p[:k] for p in perms])


# ----------------------------------------------------------------------------- logistic regression

def _default_generator_draw(generator: torch.Generator) -> int:
    """One int64 draw, as torch.empty((), dtype=torch.int64).random_() takes from a generator."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def linear_init(dim: int, num_classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (weight (C, D), bias (C,)) drawn as torch.nn.Linear(dim, num_classes) initialises them."""
    gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))  # kaiming_uniform_ with a = sqrt(5)
    weight_bound = math.sqrt(3.0) * (gain / math.sqrt(dim))
    weight = torch.empty(num_classes, dim).uniform_(-weight_bound, weight_bound, generator=generator)
    bias_bound = 1 / math.sqrt(dim)
    bias = torch.empty(num_classes).uniform_(-bias_bound, bias_bound, generator=generator)
    return weight, bias


@dataclass(frozen=True)
class LogisticConfig:
    """Training hyper-parameters of the logistic probe (CLIP_benchmark's defaults)."""

    lr: float = 0.1
    epochs: int = 10
    batch_size: int = 64


def train_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decays, seed: int,
                   config: LogisticConfig = LogisticConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (weights (M, D, C), biases (M, C)): one logistic-regression probe per weight decay.

    x (N, D) float features and y (N,) labels on one device; all M probes share the seeded
    init and batch order and are updated together.
    """
    device, (n, dim) = x.device, x.shape
    x, y = x.float(), y.long()
    decays = torch.tensor([float(w) for w in weight_decays], dtype=torch.float32, device=device)
    models = len(decays)
    generator = torch.Generator().manual_seed(seed)
    weight, bias = linear_init(dim, num_classes, generator)
    w = weight.T.to(device).expand(models, dim, num_classes).contiguous()
    b = bias.to(device).expand(models, num_classes).contiguous()
    state = [torch.zeros_like(t) for t in (w, w, b, b)]  # exp_avg / exp_avg_sq of w, then of b
    batches = math.ceil(n / config.batch_size)
    total, step = config.epochs * batches, 0
    beta1, beta2 = ADAM_BETAS
    for _ in range(config.epochs):
        _default_generator_draw(generator)  # the DataLoader iterator's base seed
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_default_generator_draw(generator)))
        order = order.to(device)
        for start in range(0, n, config.batch_size):
            lr = 0.5 * (1 + math.cos(math.pi * step / total)) * config.lr
            index = order[start:start + config.batch_size]
            xb, yb = x[index], y[index]
            logits = torch.baddbmm(b[:, None, :], xb.expand(models, -1, -1), w)  # (M, B, C)
            grad_logits = logits.softmax(dim=-1)
            grad_logits[:, torch.arange(len(yb), device=device), yb] -= 1.0
            grad_logits /= len(yb)
            grads = (torch.einsum("bd,mbc->mdc", xb, grad_logits), grad_logits.sum(dim=1))
            step += 1
            for param, grad, exp_avg, exp_avg_sq, decay in ((w, grads[0], state[0], state[1], decays[:, None, None]),
                                                           (b, grads[1], state[2], state[3], decays[:, None])):
                param.mul_(1 - lr * decay)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(ADAM_EPS)
                param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1 ** step))
    return w, b


def predict(weights: torch.Tensor, biases: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Return logits (M, N, C) of stacked linear probes on features x (N, D)."""
    return torch.baddbmm(biases[:, None, :], x.float().expand(weights.shape[0], -1, -1), weights)


def top1(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return the top-1 accuracy of each of M probes, (M,), from logits (M, N, C)."""
    return (logits.argmax(dim=-1) == y.to(logits.device)[None]).float().mean(dim=1)


def search_weight_decay(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                        num_classes: int, seed: int, config: LogisticConfig = LogisticConfig()) -> tuple[float, dict[float, float]]:
    """Return (chosen weight decay, validation accuracy of every weight decay tried).

    Coarse-then-refine over WD_GRID; each round trains its not-yet-tried candidates as one stack.
    """
    accuracy: dict[int, float] = {}

    def peak(candidates: list[int]) -> int:
        new = [i for i in dict.fromkeys(candidates) if i not in accuracy]
        if new:
            w, b = train_logistic(x_train, y_train, num_classes, [WD_GRID[i] for i in new], seed, config)
            accuracy.update(zip(new, top1(predict(w, b, x_val), y_val).tolist()))
        best, best_accuracy = 0, 0.0
        for i in candidates:
            if best_accuracy < accuracy[i]:
                best, best_accuracy = i, accuracy[i]
        return best

    index = peak(COARSE_INDICES)
    for span in REFINE_STEPS:
        index = peak([max(index - span, 0), index, min(index + span, len(WD_GRID) - 1)])
    return WD_GRID[index], {WD_GRID[i]: a for i, a in sorted(accuracy.items())}


# ----------------------------------------------------------------------------- ridge regression

def ridge_fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2_reg: float = 2.0 ** 10):
    """Return (weights (D+1, C), mean (D,), std (D,)) of big_vision's closed-form few-shot regressor.

    Features are whitened with the training mean/std (+1e-5), a constant column of 100 stands in
    for the bias, targets are one-hot mapped to +1/-1; solved in float64.
    """
    x = x.double()
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False) + 1e-5
    design = torch.nn.functional.pad((x - mean) / std, (0, 1), value=BIAS_CONSTANT)
    targets = 2.0 * torch.nn.functional.one_hot(y.long().to(x.device), num_classes).double() - 1.0
    n, d = design.shape
    if n >= d:
        weights = torch.linalg.solve(design.T @ design + l2_reg * torch.eye(d, dtype=x.dtype, device=x.device),
                                     design.T @ targets)
    else:  # the dual form: fewer equations when examples are fewer than dimensions
        weights = design.T @ torch.linalg.solve(design @ design.T + l2_reg * torch.eye(n, dtype=x.dtype, device=x.device),
                                                targets)
    return weights, mean, std


def ridge_predict(fit, x: torch.Tensor) -> torch.Tensor:
    """Return scores (N, C) of a ridge_fit result on features x (N, D)."""
    weights, mean, std = fit
    return torch.nn.functional.pad((x.double() - mean) / std, (0, 1), value=BIAS_CONSTANT) @ weights
