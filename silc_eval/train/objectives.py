"""Training objectives, selected by name in a recipe and built from its `objective:` section.

An objective says which views of each image the data must produce, which extra trainable
modules (heads) the student carries, how the student runs on a batch (inside the DDP
forward, so gradients synchronise), how the losses are formed (outside it, where frozen
or EMA teachers run), and what happens after each optimiser step (the EMA update).

Defined here: the contrastive objective (clip, siglip, views-only), silc (image-text loss on
every global view plus local-to-global self-distillation from an EMA teacher) and dino
(self-distillation alone: the `vision-ssl` recipe); sfclip lives in train/sfclip.py. The
factory that picks one by name (build_objective) is train/factory.py, which imports both
files, so neither needs the other beyond sfclip's base class.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from silc_eval.core.errors import UserError
from silc_eval.models.vit import forward_any_size
from silc_eval.train.augment import ViewSpec
from silc_eval.train.diagnostics import (
    TrainingWarning,
    effective_rank,
    entropy_warning,
    momentum_from_horizon,
    relative_drift,
)
from silc_eval.train.distill import ViewDistillationLoss
from silc_eval.train.ema import EmaTeacher
from silc_eval.train.heads import ProjectionHead

CONTRASTIVE_LOSSES = ("clip", "siglip")
DISTILL_DEFAULTS = {"out_dim": 65536, "hidden_dim": 2048, "bottleneck_dim": 256, "head_layers": 3,
                    "teacher_temp": 0.07, "teacher_temp_start": 0.04, "teacher_temp_warmup_steps": 0,
                    "student_temp": 0.1, "center_momentum": 0.9, "ema_momentum": 0.996, "weight": 1.0,
                    "ema_horizon_images": None, "start_step": 0}
SILC_VIEWS = {"n_global": 2, "global_scale": (0.4, 1.0), "n_local": 8, "local_scale": (0.05, 0.4)}


class StudentModule(nn.Module):
    """The trained modules: the open_clip model and the objective's extra heads.

    forward(fn, batch) returns fn(self, batch): the objective's student pass runs inside
    this module's forward, so DistributedDataParallel sees it and synchronises gradients.
    """

    def __init__(self, clip: nn.Module, extras: dict[str, nn.Module]):
        super().__init__()
        self.clip = clip
        self.extras = nn.ModuleDict(extras)

    def forward(self, fn: Callable, batch) -> dict[str, Any]:
        return fn(self, batch)


def contrastive_loss_fn(kind: str, rank: int, world_size: int) -> nn.Module:
    """Return open_clip's ClipLoss or SigLipLoss, set up to gather features across ranks with gradients."""
    from open_clip.loss import ClipLoss, SigLipLoss

    if kind == "clip":
        return ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)
    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    raise UserError(f"unknown contrastive loss '{kind}'; expected one of {', '.join(CONTRASTIVE_LOSSES)}")


class ContrastiveObjective:
    """Image-text loss (clip or siglip) averaged over the chosen views; no teacher.

    contrastive_views: 'global' (the global crops) or 'all' (every view, local crops included).
    """

    name = "contrastive"
    uses_text = True

    def __init__(self, contrastive: str = "clip", views: ViewSpec = ViewSpec(), contrastive_views: str = "global",
                 rank: int = 0, world_size: int = 1):
        if contrastive_views not in ("global", "all"):
            raise UserError(f"contrastive_views must be global or all, not {contrastive_views}")
        self.contrastive, self.views, self.contrastive_views = contrastive, views, contrastive_views
        self.loss = contrastive_loss_fn(contrastive, rank, world_size)
        self._embeddings: torch.Tensor | None = None  # the last step's first-view image embeddings

    def extras(self, clip: nn.Module) -> dict[str, nn.Module]:
        """Return the extra trainable modules this objective adds to the student (none)."""
        return {}

    def attach(self, student: StudentModule, tokenizer=None) -> None:
        """Build teachers from the initial student (none here)."""

    def contrastive_view_count(self) -> int:
        """Return how many leading views enter the image-text loss."""
        return self.views.n_global if self.contrastive_views == "global" else self.views.n_views

    def student_forward(self, student: StudentModule, batch) -> dict[str, Any]:
        """Return image embeddings of every view, pre-normalisation, and normalised text features."""
        clip = student.clip
        pooled = [forward_any_size(clip.visual, view)[0] for view in batch.views]
        text = F.normalize(clip.encode_text(batch.tokens), dim=-1)
        return {"image_embeddings": pooled, "text_features": text, "logit_scale": clip.logit_scale.exp(),
                "logit_bias": getattr(clip, "logit_bias", None)}

    def contrastive_term(self, outputs: dict[str, Any]) -> torch.Tensor:
        """Return the image-text loss averaged over the contrastive views."""
        self._embeddings = outputs["image_embeddings"][0].detach()
        terms = []
        for embedding in outputs["image_embeddings"][:self.contrastive_view_count()]:
            args = [F.normalize(embedding, dim=-1), outputs["text_features"], outputs["logit_scale"]]
            if self.contrastive == "siglip":
                args.append(outputs["logit_bias"])
            terms.append(self.loss(*args))
        return torch.stack(terms).mean()

    def losses(self, outputs: dict[str, Any], batch, step: int) -> dict[str, torch.Tensor]:
        """Return {'loss': total, 'contrastive': ...}."""
        contrastive = self.contrastive_term(outputs)
        return {"loss": contrastive, "contrastive": contrastive.detach()}

    def after_step(self, student: StudentModule) -> None:
        """Update teachers after the optimiser step (none here)."""

    def diagnostics(self) -> dict[str, float]:
        """Return the last step's diagnostics: the effective rank of the first view's image embeddings."""
        if self._embeddings is None:
            return {}
        return {"embedding_effective_rank": effective_rank(self._embeddings)}

    def warning(self) -> TrainingWarning | None:
        """Return a warning about the last step's state (none here), or None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Return the objective's own state for checkpoints (teachers, centres)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""

    def card_info(self) -> dict[str, Any]:
        """Return what the model card should record about this objective beyond the recipe (teachers)."""
        return {}


class SelfDistillationMixin:
    """An EMA teacher of (image tower, projection head) and the view-distillation loss.

    `ema_horizon_images` (when set) gives the momentum 1 - batch / horizon (train/diagnostics.py)
    instead of `ema_momentum`. `start_step` > 0 switches distillation on at that step: the
    teacher is then set to the student of that step, the centre to zero and the teacher
    temperature's warm-up starts; before it the distillation head gets no gradient.
    """

    def _init_distill(self, distill: dict[str, Any], batch_size: int | None):
        if self.views.n_views < 2 or self.views.n_global < 1:
            raise UserError(f"{self.name} distils between views: it needs at least one global view and two views "
                            f"in all, not {self.views.n_global} global + {self.views.n_local} local")
        unknown = set(distill) - set(DISTILL_DEFAULTS)
        if unknown:
            raise UserError(f"unknown distill parameter '{sorted(unknown)[0]}'; allowed: "
                            f"{', '.join(DISTILL_DEFAULTS)}")
        if distill.get("ema_horizon_images") is not None and distill.get("ema_momentum") is not None:
            raise UserError("distill: give ema_momentum or ema_horizon_images, not both")
        self.distill = {**DISTILL_DEFAULTS, **distill}
        d = self.distill
        if d["ema_horizon_images"] is None and not isinstance(d["ema_momentum"], (int, float)):
            raise UserError(f"distill: ema_momentum must be a number (or give ema_horizon_images), not "
                            f"{d['ema_momentum']!r}")
        if d["ema_horizon_images"] is not None:
            if batch_size is None:
                raise UserError("distill: ema_horizon_images needs the batch size (optim.batch_size)")
            try:
                d["ema_momentum"] = momentum_from_horizon(float(d["ema_horizon_images"]), batch_size)
            except ValueError as exc:
                raise UserError(f"distill: {exc}") from None
        if not isinstance(d["start_step"], int) or d["start_step"] < 0:
            raise UserError(f"distill: start_step must be an integer >= 0, not {d['start_step']!r}")
        self.distill_loss = ViewDistillationLoss(d["out_dim"], d["teacher_temp"], d["teacher_temp_start"],
                                                 d["teacher_temp_warmup_steps"], d["student_temp"],
                                                 d["center_momentum"])
        self.teacher: EmaTeacher | None = None
        self._step = 0
        self._students: dict[str, nn.Module] = {}
        self._teacher_start: list[torch.Tensor] = []

    def _head(self, clip: nn.Module) -> ProjectionHead:
        d = self.distill
        return ProjectionHead(clip.visual.output_dim, d["out_dim"], d["hidden_dim"], d["bottleneck_dim"],
                              d["head_layers"])

    def _tracked(self, student: StudentModule) -> dict[str, nn.Module]:
        return {"visual": student.clip.visual, "head": student.extras["distill_head"]}

    def attach(self, student: StudentModule, tokenizer=None) -> None:
        """Create the EMA teacher as a copy of the student's image tower and head."""
        self._students = self._tracked(student)
        self.teacher = EmaTeacher(self._students, self.distill["ema_momentum"])
        self._teacher_start = [p.detach().clone() for p in self.teacher.parameters()]
        self.distill_loss.to(next(student.parameters()).device)

    def distilling(self, step: int) -> bool:
        """Return whether the distillation term is on at step."""
        return step >= self.distill["start_step"]

    def _start_distillation(self) -> None:
        """Set the teacher to the current student and the centre to zero (the distillation start)."""
        self.teacher.reset(self._students)
        self._teacher_start = [p.detach().clone() for p in self.teacher.parameters()]
        self.distill_loss.center.zero_()

    def after_step(self, student: StudentModule) -> None:
        """Move the teacher towards the student (fixed momentum) once distillation is on."""
        if self.distilling(self._step):
            self.teacher.update(self._tracked(student))

    def distill_term(self, outputs: dict[str, Any], batch, step: int) -> torch.Tensor | None:
        """Return the local-to-global distillation loss and update the centre; None before the start."""
        self._step = step
        if not self.distilling(step):
            return None
        if step == self.distill["start_step"] > 0:
            self._start_distillation()
        n_global = self.views.n_global
        with torch.no_grad():
            teacher_visual, teacher_head = self.teacher.copies["visual"], self.teacher.copies["head"]
            teacher = [teacher_head(forward_any_size(teacher_visual, view)[0]) for view in batch.views[:n_global]]
        loss = self.distill_loss(outputs["distill_scores"], teacher, step - self.distill["start_step"])
        self.distill_loss.update_center(teacher)
        return loss

    def diagnostics(self) -> dict[str, float]:
        """Return the last step's diagnostics: the teacher's target entropies (nats) and drift from its start,
        beside the base objective's."""
        found = super().diagnostics()
        entropies = self.distill_loss.last_entropies if self.distilling(self._step) else None
        if entropies is not None:
            found.update(teacher_entropy=entropies[0], teacher_batch_entropy=entropies[1])
            found["teacher_drift"] = relative_drift(self.teacher.parameters(), self._teacher_start)
        return found

    def warning(self) -> TrainingWarning | None:
        """Return a TrainingWarning when the teacher's targets are near uniform or collapsed, else None."""
        entropies = self.distill_loss.last_entropies if self.distilling(self._step) else None
        return None if entropies is None else entropy_warning(*entropies, self.distill["out_dim"])

    def card_info(self) -> dict[str, Any]:
        """Return the resolved EMA momentum and its horizon, beside the base objective's card entries."""
        return {**super().card_info(), "ema_momentum": self.distill["ema_momentum"],
                "distill_start_step": self.distill["start_step"]}

    def state_dict(self) -> dict[str, Any]:
        """Return the teacher weights, the centre and the teacher's parameters at its start."""
        return {"teacher": self.teacher.state_dict(), "center": self.distill_loss.center.clone(),
                "teacher_start": [p.clone() for p in self._teacher_start]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the teacher weights, the centre and the teacher's start."""
        self.teacher.load_state_dict(state["teacher"])
        self.distill_loss.center.copy_(state["center"])
        if "teacher_start" in state:
            self._teacher_start = [p.clone() for p in state["teacher_start"]]


class SilcObjective(SelfDistillationMixin, ContrastiveObjective):
    """SILC: image-text loss on every global view + local-to-global self-distillation (benchmarks/PROTOCOLS.md 7)."""

    name = "silc"

    def __init__(self, contrastive: str = "clip", views: ViewSpec = ViewSpec(**SILC_VIEWS),
                 distill: dict[str, Any] | None = None, rank: int = 0, world_size: int = 1,
                 batch_size: int | None = None):
        super().__init__(contrastive, views, "global", rank, world_size)
        self._init_distill(distill or {}, batch_size)

    def extras(self, clip: nn.Module) -> dict[str, nn.Module]:
        """Return the student's projection head."""
        return {"distill_head": self._head(clip)}

    def student_forward(self, student: StudentModule, batch) -> dict[str, Any]:
        """Return the contrastive outputs plus the head's scores for every view."""
        outputs = super().student_forward(student, batch)
        head = student.extras["distill_head"]
        outputs["distill_scores"] = [head(e) for e in outputs["image_embeddings"]]
        return outputs

    def losses(self, outputs: dict[str, Any], batch, step: int) -> dict[str, torch.Tensor]:
        """Return {'loss': contrastive + weight * distill, 'contrastive', 'distill'} (distill 0 before its start)."""
        contrastive = self.contrastive_term(outputs)
        distill = self.distill_term(outputs, batch, step)
        if distill is None:  # the head's scores enter with weight 0: no gradient, and DDP sees them used
            unused = sum(scores.sum() for scores in outputs["distill_scores"]) * 0.0
            return {"loss": contrastive + unused, "contrastive": contrastive.detach(),
                    "distill": torch.zeros((), device=contrastive.device)}
        total = contrastive + self.distill["weight"] * distill
        return {"loss": total, "contrastive": contrastive.detach(), "distill": distill.detach()}


class DinoObjective(SelfDistillationMixin, ContrastiveObjective):
    """Self-distillation between views alone, no text: trains a unimodal vision teacher (`vision-ssl`)."""

    name = "dino"
    uses_text = False

    def __init__(self, views: ViewSpec = ViewSpec(**SILC_VIEWS), distill: dict[str, Any] | None = None,
                 rank: int = 0, world_size: int = 1, batch_size: int | None = None):
        super().__init__("clip", views, "global", rank, world_size)
        self._init_distill(distill or {}, batch_size)
        if self.distill["start_step"]:
            raise UserError("dino learns from distillation alone: start_step must be 0")

    def extras(self, clip: nn.Module) -> dict[str, nn.Module]:
        """Return the student's projection head."""
        return {"distill_head": self._head(clip)}

    def student_forward(self, student: StudentModule, batch) -> dict[str, Any]:
        """Return the head's scores for every view (the text tower is not run)."""
        head = student.extras["distill_head"]
        return {"distill_scores": [head(forward_any_size(student.clip.visual, v)[0]) for v in batch.views]}

    def losses(self, outputs: dict[str, Any], batch, step: int) -> dict[str, torch.Tensor]:
        """Return {'loss': distill, 'distill'}."""
        distill = self.distill_term(outputs, batch, step)
        return {"loss": distill, "distill": distill.detach()}
