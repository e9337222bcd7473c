"""What a self-distillation run's logs and card say about its teacher and embedding (issue: recipes at the
zoo's scale).

- the EMA momentum from a horizon: an EMA with per-step momentum m has a time constant of
  1 / (1 - m) steps (a student state that many steps old weighs 1/e of the newest). A horizon of
  H images at batch B is H / B steps, so m = 1 - B / H. DINO's 0.996 at batch 1024 is a horizon of
  256k images; its 0.9995 at batch 256 one of 512k (benchmarks/PROTOCOLS.md section 7);
- the teacher's target entropies, per sample and of the batch-mean target, in nats, with the two
  failure modes DINO names: uniform targets (per-sample entropy near ln K: nothing to distil) and
  a collapse onto few prototypes (batch-mean entropy near 0);
- the teacher's drift from its initialisation (relative L2 distance of its parameters);
- the effective rank of a batch of embeddings: exp of the entropy of the normalised singular
  values (Roy and Vetterli, 2007), between 1 and the embedding width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

UNIFORM_FRACTION = 0.9  # per-sample entropy above this fraction of ln K: targets are close to uniform
COLLAPSE_FRACTION = 0.1  # batch-mean entropy below this fraction of ln K: the targets collapsed to few prototypes


def momentum_from_horizon(horizon_images: float, batch_size: int) -> float:
    """Return the per-step EMA momentum 1 - batch_size / horizon_images (time constant horizon_images images).

    Raises ValueError unless horizon_images > batch_size > 0.
    """
    if batch_size <= 0 or horizon_images <= batch_size:
        raise ValueError(f"an EMA horizon of {horizon_images:g} images needs more images than one batch "
                         f"({batch_size})")
    return 1.0 - batch_size / horizon_images


def horizon_from_momentum(momentum: float, batch_size: int) -> float:
    """Return the horizon in images (batch_size / (1 - momentum)) of a per-step momentum below 1."""
    return batch_size / (1.0 - momentum)


def target_summary(targets: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mean per-sample entropy, mean distribution (K,)) of probability rows targets (each (n, K)), as
    tensors on their device (no synchronisation: cheap enough for every step)."""
    with torch.no_grad():
        rows = sum(t.shape[0] for t in targets)
        entropy = sum(-(t * t.clamp_min(1e-30).log()).sum() for t in targets) / rows
        mean = sum(t.sum(0) for t in targets) / rows
    return entropy, mean


def summary_entropies(summary: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    """Return (mean per-sample entropy, entropy of the batch-mean distribution), in nats, of a target_summary."""
    entropy, mean = summary
    mean = mean.double()
    return float(entropy), float(-(mean * mean.clamp_min(1e-30).log()).sum())


def target_entropies(targets: torch.Tensor) -> tuple[float, float]:
    """Return (mean per-sample entropy, entropy of the batch-mean distribution), in nats, of probability rows
    targets (N, K)."""
    return summary_entropies(target_summary([targets.detach()]))


@dataclass(frozen=True)
class TrainingWarning:
    """A warning about a run's state: its kind (one is logged per kind and run) and its one-line message."""

    kind: str
    message: str


def entropy_warning(per_sample: float, batch_mean: float, prototypes: int) -> TrainingWarning | None:
    """Return a TrainingWarning ('uniform targets' or 'collapsed targets') when the teacher's targets are near
    uniform or collapsed onto few prototypes, else None."""
    ceiling = math.log(prototypes)
    if per_sample >= UNIFORM_FRACTION * ceiling:
        return TrainingWarning("uniform targets", f"teacher targets are near uniform: per-sample entropy "
                               f"{per_sample:.2f} of ln K = {ceiling:.2f} nats (nothing to distil: an EMA horizon "
                               f"too long for the budget, or a teacher temperature too high)")
    if batch_mean <= COLLAPSE_FRACTION * ceiling:
        return TrainingWarning("collapsed targets", f"teacher targets collapsed onto few prototypes: batch-mean "
                               f"entropy {batch_mean:.2f} of ln K = {ceiling:.2f} nats")
    return None


def relative_drift(current: Iterable[torch.Tensor], initial: Iterable[torch.Tensor]) -> float:
    """Return ||current - initial|| / ||initial|| over all tensors together (0 when initial is all zeros)."""
    difference, reference = 0.0, 0.0
    for now, before in zip(current, initial, strict=True):
        difference += float((now.detach().double() - before.detach().double().to(now.device)).pow(2).sum())
        reference += float(before.detach().double().pow(2).sum())
    return math.sqrt(difference / reference) if reference > 0 else 0.0


def effective_rank(embeddings: torch.Tensor) -> float:
    """Return exp(entropy of the normalised singular values) of embeddings (N, D), centred; 0 for a zero
    matrix."""
    centred = embeddings.detach().double()
    centred = centred - centred.mean(0, keepdim=True)
    singular = torch.linalg.svdvals(centred)
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
