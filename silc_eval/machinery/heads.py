"""Trained segmentation heads on a frozen backbone (PROTOCOLS.md sections 5 and 6).

Shared by the open-vocabulary and the linear-probe tasks:

- the protocol parameters both declare (window geometry, optimiser, seed);
- a cache of frozen features of every training window, computed once under inference mode
  (each train image resized to the short side, labels with nearest, padded with ignore up
  to the window if smaller, then cut into the sliding-window boxes of evaluation);
- a seeded training loop over mini-batches of cached windows (AdamW, poly decay);
- sliding-window evaluation of a head into a SegmentationMeter;
- the heads: a residual open-vocabulary decoder (MLP or one transformer layer) and a
  BatchNorm + 1x1 conv linear probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset
from tqdm import tqdm

from silc_eval.core import distributed
from silc_eval.core.labels import IGNORE_INDEX
from silc_eval.core.params import Param, boolean, integer, number
from silc_eval.features import autocast_context
from silc_eval.machinery.dense_segmentation import image_batches, slid_meter
from silc_eval.machinery.segmentation_metrics import SegmentationMeter
from silc_eval.machinery.windows import normalization_tensors, prepare_image, short_side_size, window_boxes

POLY_POWER = 0.9  # mmseg's default poly learning-rate decay

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # windows (N, 3, h, w) -> features (N, gh, gw, D)


def training_params(min_steps: int = 1, weight_decay: float = 1e-4) -> dict[str, Param]:
    """Return the protocol parameters of a head trained on cached windows (both trained-head tasks)."""
    return {
        "short_side": integer(336, 1, doc="evaluation and training images are resized to this short side"),
        "window": integer(224, 1, doc="sliding-window size"),
        "stride": integer(112, 1, doc="sliding-window stride"),
        "steps": integer(2000, min_steps, doc="optimiser steps of the head"),
        "train_batch_size": integer(16, 1, doc="cached windows per training step"),
        "lr": number(1e-3, above=0.0),
        "weight_decay": number(weight_decay, minimum=0.0),
        "seed": integer(0),
        "max_train_images": integer(None, 1, nullable=True, doc="a seeded subset of the training split"),
        "batch_size": integer(32, 1, doc="windows per forward pass"),
        "num_workers": integer(0, 0),
        "amp": boolean(False),
    }


@dataclass
class WindowCache:
    """Frozen features (N, gh, gw, D) of N training windows (float16, CPU) and their labels (N, h, w) (CPU)."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.features.shape[0]


def training_windows(image: torch.Tensor, label: torch.Tensor, short_side: int, window: int, stride: int,
                     mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (windows (K, 3, w, w), labels (K, w, w)) of one uint8 image and its label map.

    The image is resized as at evaluation (bilinear), the label with nearest; an image smaller
    than the window is padded (zeros after normalisation, label ignore) up to it.
    """
    x = prepare_image(image, short_side, mean, std)
    size = short_side_size(label.shape[-2], label.shape[-1], short_side)
    y = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    pad_h, pad_w = max(window - size[0], 0), max(window - size[1], 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
        y = F.pad(y, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    boxes = window_boxes(x.shape[-2], x.shape[-1], window, stride)
    return (torch.stack([x[:, t:b, l:r] for t, b, l, r in boxes]),
            torch.stack([y[t:b, l:r] for t, b, l, r in boxes]))


def subset_for_training(dataset, max_images: int | None, seed: int):
    """Return dataset, or a seeded random subset of max_images of its items (kept in dataset order)."""
    if max_images is None or max_images >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(len(dataset), generator=generator)[:max_images].sort().values.tolist())


def cache_features(model, dataset, feature_fn: FeatureFn, params: dict, progress: bool = True) -> WindowCache:
    """Return the WindowCache of every training window of dataset, features from feature_fn without gradients.

    Under torchrun every rank cuts all windows (cheap) but runs feature_fn only on its round-robin
    share of the window batches, so each batch is the one a single process would form; every rank
    then holds all features in order (and trains the same seeded head on them).
    """
    mean, std = normalization_tensors(model)
    window, device = params["window"], model.device
    label_dtype = torch.uint8 if dataset.num_classes < IGNORE_INDEX else torch.int16
    dataset = subset_for_training(dataset, params.get("max_train_images"), params["seed"])
    features, labels, pending = [], [], []
    flushed = [0]

    def flush() -> None:
        if distributed.owns(flushed[0]):
            with torch.inference_mode(), autocast_context(device, params["amp"]):
                features.append(feature_fn(torch.cat(pending)).to("cpu", torch.float16))
        flushed[0] += 1
        pending.clear()

    for items in tqdm(image_batches(dataset, max(1, params["batch_size"] // 4), params["num_workers"]),
                      disable=not progress, desc="training windows", leave=False):
        for image, label, _ in items:
            crops, crop_labels = training_windows(image.to(device), label, params["short_side"], window,
                                                  params["stride"], mean, std)
            pending.append(crops)
            labels.append(crop_labels.to(label_dtype))
            if sum(len(p) for p in pending) >= params["batch_size"]:
                flush()
    if pending:
        flush()
    features = distributed.gather_chunks(features, flushed[0])
    # Concatenated outside inference mode so the cache can feed autograd.
    return WindowCache(torch.cat(features), torch.cat(labels))


def seeded_module(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Return build() with its parameters initialised from torch's CPU generator seeded with seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def window_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the cross-entropy of patch logits (B, Q, gh, gw) upsampled bilinearly to labels (B, h, w).

    Pixels labelled ignore (255) do not count; a batch without valid pixels gives a zero loss.
    """
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if not (labels != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def train_head(head: nn.Module, cache: WindowCache, step_fn: Callable, params: dict, device,
               progress: bool = True) -> list[float]:
    """Train head for params['steps'] AdamW steps on seeded mini-batches of cached windows; return the losses.

    step_fn(head, features (B, gh, gw, D) float32, labels (B, h, w) int64) returns the loss
    of one mini-batch. Mini-batches walk through seeded permutations of the cache.
    """
    head.train()
    parameters = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=params["lr"], weight_decay=params["weight_decay"])
    steps, batch = params["steps"], min(params["train_batch_size"], len(cache))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 - step / max(steps, 1)) ** POLY_POWER)
    generator = torch.Generator().manual_seed(params["seed"])
    order, position, losses = torch.randperm(len(cache), generator=generator), 0, []
    for _ in tqdm(range(steps), disable=not progress, desc="train head", leave=False):
        if position + batch > len(order):
            order, position = torch.randperm(len(cache), generator=generator), 0
        index = order[position:position + batch]
        position += batch
        features = cache.features[index].to(device, torch.float32)
        labels = cache.labels[index].to(device, torch.int64)
        loss = step_fn(head, features, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    head.eval()
    return losses


def evaluate_head(model, dataset, window_fn: FeatureFn, params: dict, progress: bool = True,
                  desc: str = "segmentation") -> SegmentationMeter:
    """Return the SegmentationMeter of argmax predictions of window_fn (windows -> logits (N, C, gh, gw))
    slid over every image of dataset, exactly as zero-shot segmentation slides (and shards) them."""
    return slid_meter(model, dataset, window_fn, lambda logits: logits.argmax(dim=0), params, progress, desc)


def frozen_window_fn(model, feature_fn: FeatureFn, head: Callable[[torch.Tensor], torch.Tensor],
                     amp: bool) -> FeatureFn:
    """Return a function mapping windows (N, 3, h, w) to head(features) logits (N, C, gh, gw), without gradients."""

    def window_fn(windows: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            with autocast_context(model.device, amp):
                features = feature_fn(windows)
            return head(features.float())

    return window_fn


# ----------------------------------------------------------------------------- heads

class ResidualMLP(nn.Module):
    """x + MLP(LayerNorm(x)) on the last dimension; the output layer starts at zero (identity at init)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x plus the residual branch, same shape as x (..., dim)."""
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ResidualAttention(nn.Module):
    """One pre-norm transformer layer over the patches of a window; both output projections start at zero."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        heads = max(1, dim // 64)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = ResidualMLP(dim, hidden)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the layer's output for patch grids x (B, gh, gw, dim), same shape."""
        batch, gh, gw, dim = x.shape
        tokens = x.reshape(batch, gh * gw, dim)
        y = self.norm(tokens)
        tokens = tokens + self.attn(y, y, y, need_weights=False)[0]
        return self.mlp(tokens).reshape(batch, gh, gw, dim)


DECODERS = {"mlp": ResidualMLP, "transformer": ResidualAttention}


class OpenVocabDecoder(nn.Module):
    """Normalised frozen patch embeddings -> residual blocks -> cosine with class texts x a learned scale.

    The residual blocks start as the identity, so the untrained decoder is zero-shot
    dense CLIP; the logit scale is learnt in log space from 1 / temperature (capped at 100).
    """

    def __init__(self, dim: int, hidden: int, layers: int, kind: str = "mlp", temperature: float = 0.07):
        super().__init__()
        self.blocks = nn.Sequential(*(DECODERS[kind](dim, hidden) for _ in range(layers)))
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Return the decoded, L2-normalised patch embeddings (B, gh, gw, E) of features (B, gh, gw, E)."""
        return F.normalize(self.blocks(F.normalize(features, dim=-1)), dim=-1)

    def forward(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Return logits (B, Q, gh, gw): scaled cosine of decoded patches with the normalised text rows (Q, E)."""
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        return scale * torch.einsum("bhwe,qe->bqhw", self.embed(features), F.normalize(text, dim=-1))


class LinearProbe(nn.Module):
    """BatchNorm2d + 1x1 conv on patch tokens: (B, gh, gw, D) -> class logits (B, C, gh, gw)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm, self.conv = nn.BatchNorm2d(dim), nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return the (B, C, gh, gw) logits of patch tokens (B, gh, gw, D)."""
        return self.conv(self.norm(tokens.permute(0, 3, 1, 2)))
