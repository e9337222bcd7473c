"""Training objectives, selected by name in a recipe; each maps model outputs to a loss dict.

An objective is called with the model's outputs for a batch and returns
{"loss": total, <component>: value, ...}. New recipes (SILC, SF-CLIP) add entries here.
"""

from __future__ import annotations

from typing import Callable

import torch


class ContrastiveObjective:
    """open_clip's image-text contrastive losses: 'clip' (softmax InfoNCE) or 'siglip' (sigmoid)."""

    def __init__(self, kind: str = "clip", rank: int = 0, world_size: int = 1):
        import open_clip

        self.kind = kind
        if kind == "clip":
            self.loss = open_clip.ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True,
                                           rank=rank, world_size=world_size)
        elif kind == "siglip":
            self.loss = open_clip.SigLipLoss(rank=rank, world_size=world_size)
        else:
            raise ValueError(f"unknown contrastive loss {kind}")

    def __call__(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [outputs["image_features"], outputs["text_features"], outputs["logit_scale"]]
        if self.kind == "siglip":
            args.append(outputs["logit_bias"])
        contrastive = self.loss(*args)
        return {"loss": contrastive, "contrastive": contrastive.detach()}


OBJECTIVES: dict[str, Callable[..., ContrastiveObjective]] = {
    "clip": lambda **kw: ContrastiveObjective("clip", **kw),
    "siglip": lambda **kw: ContrastiveObjective("siglip", **kw),
}


def build_objective(name: str, **kwargs):
    """Return the objective registered as name; kwargs go to its constructor (rank, world_size)."""
    if name not in OBJECTIVES:
        from silc_eval.errors import UserError

        raise UserError(f"unknown objective '{name}'; expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](**kwargs)
