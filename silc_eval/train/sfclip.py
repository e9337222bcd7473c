"""SF-CLIP: contrastive pretraining plus masked distillation from frozen unimodal teachers (benchmarks/PROTOCOLS.md 8).

What the abstract states, and what is implemented as stated: an image-text contrastive
loss; masked knowledge distillation from a frozen vision teacher (per patch) and a frozen
text teacher (per token); distillation applied to part of the batch only, for efficiency;
the student's token embedding initialised from the text teacher's word embeddings.

What the abstract leaves open, and the defaults chosen here (each a recipe parameter):
- distill_fraction 0.25: the first quarter of each rank's batch also runs masked.
- image_mask_ratio 0.5, text_mask_ratio 0.3: per-sample random masks of exactly that share
  of patches / word tokens (at least one); masked patches become a learned mask token,
  masked words the tokenizer's [MASK] token.
- targets: the teachers' final-layer features of the UNMASKED inputs (vision: patch tokens
  resized to the student's grid; text: the mean of the word's sub-word features), layer-
  normalised without affine parameters; loss only at masked positions.
- loss 'cosine' (1 - cosine similarity; 'smooth_l1' and 'mse' available); head 'mlp'
  (one hidden GELU layer; 'linear' available), one head per modality.
- image_weight 1.0, text_weight 1.0 on top of the contrastive loss.
Text distillation needs the word-level tokenizer of silc-eval's own checkpoints (one token
per word), which makes student positions and teacher words line up.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from silc_eval.core.errors import UserError
from silc_eval.core.paths import PROJECT_ROOT
from silc_eval.models.loading import local_dir_folder, local_dir_spec
from silc_eval.models.vit import forward_any_size, grid_for
from silc_eval.train.augment import ViewSpec
from silc_eval.train.heads import regression_head
from silc_eval.train.objectives import ContrastiveObjective, StudentModule
from silc_eval.train.tokenizer import MASK

LOSSES = ("cosine", "smooth_l1", "mse")


def resolve_teacher_path(spec: str) -> str:
    """Return spec with a relative local-dir path resolved against the project root when it is not found as given."""
    path = local_dir_folder(spec)
    if path is not None and not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
        return local_dir_spec(PROJECT_ROOT / path)
    return spec


def resolve_text_teacher(spec: str) -> Path:
    """Return the folder of a text teacher: a path, or 'package:NAME' for a package with get_model_path()."""
    if spec.startswith("package:"):
        import importlib

        name = spec[len("package:"):]
        try:
            return Path(importlib.import_module(name).get_model_path())
        except (ImportError, AttributeError):
            raise UserError(f"text teacher {spec}: package {name} is not installed or has no get_model_path()") from None
    return Path(spec)


def random_mask(length: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Return a bool mask of length with exactly max(1, round(ratio * length)) True positions."""
    count = min(length, max(1, round(ratio * length)))
    mask = torch.zeros(length, dtype=torch.bool)
    mask[torch.randperm(length, generator=generator)[:count]] = True
    return mask


def feature_loss(kind: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the mean per-position distillation loss between (P, D) predictions and layer-normed targets."""
    target = F.layer_norm(target, target.shape[-1:])
    if kind == "cosine":
        return (1 - F.cosine_similarity(prediction, target, dim=-1)).mean()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(prediction, target)
    if kind == "mse":
        return F.mse_loss(prediction, target)
    raise UserError(f"unknown sfclip loss '{kind}'; expected one of {', '.join(LOSSES)}")


def text_token_features(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Return the text tower's per-token features after its final norm (B, T, width), for open_clip CLIP."""
    if not hasattr(clip, "token_embedding"):
        raise UserError("sfclip text distillation needs an open_clip CLIP with its own text transformer")
    x = clip.token_embedding(tokens) + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    return clip.ln_final(x)


class SfClipObjective(ContrastiveObjective):
    """Contrastive loss on the full batch plus masked distillation on a fraction of it."""

    name = "sfclip"

    def __init__(self, views: ViewSpec = ViewSpec(), contrastive: str = "clip", vision_teacher: str | None = None,
                 text_teacher: str | None = None, distill_fraction: float = 0.25, image_mask_ratio: float = 0.5,
                 text_mask_ratio: float = 0.3, loss: str = "cosine", head: str = "mlp", image_weight: float = 1.0,
                 text_weight: float = 1.0, inherit_embeddings: bool = True, text_cache_size: int = 50000,
                 rank: int = 0, world_size: int = 1):
        super().__init__(contrastive, views, "global", rank, world_size)
        if loss not in LOSSES:
            raise UserError(f"unknown sfclip loss '{loss}'; expected one of {', '.join(LOSSES)}")
        if not 0 < distill_fraction <= 1:
            raise UserError(f"sfclip distill_fraction must be in (0, 1], not {distill_fraction}")
        if vision_teacher is None and text_teacher is None:
            raise UserError("sfclip needs vision_teacher and/or text_teacher")
        self.vision_spec, self.text_spec = vision_teacher, text_teacher
        self.fraction, self.image_ratio, self.text_ratio = distill_fraction, image_mask_ratio, text_mask_ratio
        self.loss_kind, self.head_kind = loss, head
        self.image_weight, self.text_weight = image_weight, text_weight
        self.inherit = inherit_embeddings
        self.cache_size = text_cache_size
        self.vision_teacher = self.text_teacher = None
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.inheritance_report: dict[str, Any] | None = None

    def _load_teachers(self, device) -> None:
        from silc_eval.train.teachers import load_text_teacher, load_vision_teacher

        if self.vision_spec and self.vision_teacher is None:
            self.vision_teacher = load_vision_teacher(resolve_teacher_path(self.vision_spec), device=device)
        if self.text_spec and self.text_teacher is None:
            self.text_teacher = load_text_teacher(resolve_text_teacher(self.text_spec), device=device)

    def extras(self, clip: nn.Module) -> dict[str, nn.Module]:
        """Return the mask token and the regression heads (their widths need the teachers)."""
        self._load_teachers("cpu")
        extras: dict[str, nn.Module] = {}
        if self.vision_teacher is not None:
            width = clip.visual.conv1.out_channels
            extras["image_head"] = regression_head(self.head_kind, width, self.vision_teacher.dim)
            extras["mask_token"] = _MaskToken(width)
        if self.text_teacher is not None:
            extras["text_head"] = regression_head(self.head_kind, clip.token_embedding.embedding_dim,
                                                  self.text_teacher.dim)
        return extras

    def attach(self, student: StudentModule, tokenizer=None) -> None:
        """Move teachers to the student's device and inherit the token embedding from the text teacher."""
        device = next(student.parameters()).device
        self.vision_teacher = self.vision_teacher.to(device) if self.vision_teacher is not None else None
        self.text_teacher = self.text_teacher.to(device) if self.text_teacher is not None else None
        self.tokenizer = tokenizer
        if self.text_teacher is not None:
            if tokenizer is None or not hasattr(tokenizer, "tokenizer"):
                raise UserError("sfclip text distillation needs the checkpoint's word-level tokenizer")
            self.vocab = tokenizer.tokenizer.get_vocab()
            if MASK not in self.vocab:
                raise UserError(f"the student tokenizer has no {MASK} token; retrain it with silc-eval's tokenizer")
            if self.inherit:
                from silc_eval.train.teachers import inherit_token_embedding

                self.inheritance_report = inherit_token_embedding(student.clip.token_embedding, self.vocab,
                                                                  self.text_teacher)

    def _subset(self, batch) -> int:
        return max(1, math.ceil(self.fraction * batch.tokens.shape[0]))

    def _generator(self, position: int, step: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed((int(position) * 1_000_003 + step) * 4 + salt)

    def student_forward(self, student: StudentModule, batch) -> dict[str, Any]:
        """Return the contrastive outputs plus masked predictions for the distilled subset."""
        outputs = super().student_forward(student, batch)
        clip, n, step = student.clip, self._subset(batch), batch.step
        device = batch.tokens.device
        if self.vision_teacher is not None:
            images = batch.views[0][:n]
            grid = grid_for(clip.visual, images.shape[-2], images.shape[-1])
            mask = torch.stack([random_mask(grid[0] * grid[1], self.image_ratio, self._generator(p, step, 1))
                                for p in batch.positions[:n]]).to(device)
            tokens = forward_any_size(clip.visual, images, mask, student.extras["mask_token"].token)[1]
            outputs["image_prediction"] = student.extras["image_head"](tokens[mask])
            outputs["image_mask"], outputs["image_grid"] = mask, grid
        if self.text_teacher is not None:
            tokens = batch.tokens[:n].clone()
            words = (tokens != self.vocab["[PAD]"]) & (tokens != self.vocab["[BOS]"]) & (tokens != self.vocab["[EOS]"])
            mask = torch.zeros_like(words)
            for row, position in enumerate(batch.positions[:n]):
                where = words[row].nonzero().flatten()
                if len(where):
                    chosen = random_mask(len(where), self.text_ratio, self._generator(position, step, 2))
                    mask[row, where[chosen.to(where.device)]] = True
            tokens[mask] = self.vocab[MASK]
            features = text_token_features(clip, tokens)
            outputs["text_prediction"] = student.extras["text_head"](features[mask])
            outputs["text_mask"] = mask
        return outputs

    def _text_targets(self, captions: list[str], length: int, device) -> torch.Tensor:
        """Return teacher word features aligned to student token positions (B, length, D); cached per caption."""
        rows = []
        for caption in captions:
            key = f"{length}\0{caption}"
            if key not in self._text_cache:
                words = self.tokenizer.tokenizer.convert_ids_to_tokens(self.tokenizer([caption])[0].tolist())
                words = [w for w in words if w not in ("[PAD]", "[BOS]", "[EOS]")]
                features, _ = self.text_teacher.word_features([words], max_words=length - 1)
                aligned = torch.zeros(length, features.shape[-1])
                aligned[1:1 + len(words)] = features[0, :len(words)].cpu()
                self._text_cache[key] = aligned
                if len(self._text_cache) > self.cache_size:
                    self._text_cache.popitem(last=False)
            rows.append(self._text_cache[key])
        return torch.stack(rows).to(device)

    def losses(self, outputs: dict[str, Any], batch, step: int) -> dict[str, torch.Tensor]:
        """Return {'loss': contrastive + weighted distillation terms, and each term}."""
        contrastive = self.contrastive_term(outputs)
        result = {"contrastive": contrastive.detach()}
        total = contrastive
        n = self._subset(batch)
        if self.vision_teacher is not None:
            target = self.vision_teacher.patch_features(batch.views[0][:n], grid=outputs["image_grid"])
            image = feature_loss(self.loss_kind, outputs["image_prediction"], target[outputs["image_mask"]])
            total = total + self.image_weight * image
            result["image_distill"] = image.detach()
        if self.text_teacher is not None:
            target = self._text_targets(batch.captions[:n], batch.tokens.shape[1], batch.tokens.device)
            text = feature_loss(self.loss_kind, outputs["text_prediction"], target[outputs["text_mask"]])
            total = total + self.text_weight * text
            result["text_distill"] = text.detach()
        result["loss"] = total
        return result

    def card_info(self) -> dict[str, Any]:
        """Return the teachers' identities and the embedding inheritance report, for the model card."""
        info = {}
        if self.vision_teacher is not None:
            info["vision_teacher"] = {"spec": self.vision_spec, "sha256": self.vision_teacher.sha256}
        if self.text_teacher is not None:
            info["text_teacher"] = {"spec": self.text_spec, "sha256": self.text_teacher.sha256}
        if self.inheritance_report:
            info["inherited_embeddings"] = self.inheritance_report
        return info


class _MaskToken(nn.Module):
    """A learned vector that replaces masked patch embeddings."""

    def __init__(self, width: int):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.token, std=0.02)
