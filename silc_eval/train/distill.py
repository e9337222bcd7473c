"""Self-distillation between views: centred, sharpened teacher targets and a cross-entropy (DINO-style)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from silc_eval.train.diagnostics import summary_entropies, target_summary


class ViewDistillationLoss(nn.Module):
    """Cross-entropy between teacher distributions on global views and student distributions on the other views.

    Teacher: softmax((t - centre) / teacher_temp); the temperature warms up linearly from
    teacher_temp_start to teacher_temp over teacher_temp_warmup_steps. Student:
    log_softmax(s / student_temp). Every (teacher view i, student view v) pair with v != i
    counts once; student views list the global views first, in the teacher's order.
    The centre is a momentum average of the teacher's mean output over all ranks.
    """

    def __init__(self, out_dim: int, teacher_temp: float = 0.07, teacher_temp_start: float = 0.04,
                 teacher_temp_warmup_steps: int = 0, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.teacher_temp, self.teacher_temp_start = teacher_temp, teacher_temp_start
        self.warmup = teacher_temp_warmup_steps
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self._target_summary: tuple[torch.Tensor, torch.Tensor] | None = None  # of the last step's targets

    def teacher_temperature(self, step: int) -> float:
        """Return the teacher temperature at step."""
        if step >= self.warmup:
            return self.teacher_temp
        return self.teacher_temp_start + (self.teacher_temp - self.teacher_temp_start) * step / self.warmup

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], step: int) -> torch.Tensor:
        """Return the mean cross-entropy over all (teacher global view, other student view) pairs."""
        temp = self.teacher_temperature(step)
        targets = [F.softmax((t.detach() - self.center) / temp, dim=-1) for t in teacher]
        self._target_summary = target_summary(targets)
        log_probs = [F.log_softmax(s / self.student_temp, dim=-1) for s in student]
        total, pairs = 0.0, 0
        for i, target in enumerate(targets):
            for v, log_prob in enumerate(log_probs):
                if v == i:
                    continue
                total = total + torch.sum(-target * log_prob, dim=-1).mean()
                pairs += 1
        return total / pairs

    @property
    def last_entropies(self) -> tuple[float, float] | None:
        """Return the last step's (mean per-sample, batch-mean) target entropy in nats, or None before any step."""
        return None if self._target_summary is None else summary_entropies(self._target_summary)

    @torch.no_grad()
    def update_center(self, teacher: Sequence[torch.Tensor]) -> None:
        """Move the centre towards the teacher outputs' batch mean (averaged over ranks)."""
        outputs = torch.cat([t.detach() for t in teacher])
        batch_sum = outputs.sum(dim=0, keepdim=True)
        count = torch.tensor([outputs.shape[0]], dtype=batch_sum.dtype, device=batch_sum.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1.0 - self.center_momentum)
