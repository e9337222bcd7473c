"""Trained segmentation heads on a frozen backbone (benchmarks/PROTOCOLS.md sections 5 and 6).

Shared by the open-vocabulary and the linear-probe tasks:

- the protocol parameters they declare (window geometry; the optimiser and seeds of trained heads);
- a cache of frozen features of every training window, computed once under inference mode
  (each train image resized to the short side, labels with nearest, padded with ignore up
  to the window if smaller, then cut into the sliding-window boxes of evaluation) and kept
  in the on-disk feature cache;
- the loss: cross-entropy of patch logits upsampled bilinearly to the window's labels,
  written as two matrix products with a hand-written gradient (same value and gradient as
  interpolate + cross_entropy, about twice as fast on a CPU), shared with the convex probe;
- a seeded training loop over mini-batches of cached windows (AdamW, poly decay), one head
  per seed (the linear probe is convex and solved by convex_probe.py instead);
- sliding-window evaluation of every seed's head over the evaluation windows' features,
  computed once (window_features.py);
- the open-vocabulary decoder: residual blocks (MLP or one transformer layer) and a cosine with
  the class texts.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset
from tqdm import tqdm

from silc_eval.core import distributed
from silc_eval.core.errors import UserError
from silc_eval.core.labels import IGNORE_INDEX
from silc_eval.core.params import Param, boolean, choice, int_list, integer, number
from silc_eval.features import autocast_context, precision_label
from silc_eval.features import cache as feature_cache
from silc_eval.machinery.dense_segmentation import class_map, image_batches
from silc_eval.machinery.segmentation_metrics import SegmentationMeter
from silc_eval.machinery.window_features import HeadFn, images_per_step, slid_meters, window_features
from silc_eval.machinery.windows import (
    RESIZES,
    bilinear_matrix,
    normalization_tensors,
    prepare_image,
    short_side_size,
    window_boxes,
)
from silc_eval.models import dense

POLY_POWER = 0.9  # mmseg's default poly learning-rate decay
# Bumped whenever fitting a head from the same windows, labels and parameters gives another head: trained heads kept in
# the feature cache (cached_fit) carry it in their key, so a change never serves a stale head.
HEAD_CODE_VERSION = 2  # 2: the decoders' seen-class text keyed by features.cache.content_sha256

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # windows (N, 3, h, w) -> features (N, gh, gw, D)


def window_params() -> dict[str, Param]:
    """Return the protocol parameters of cutting, caching and sliding windows (every trained-head task)."""
    return {
        "short_side": integer(336, 1, doc="evaluation and training images are resized to this short side"),
        "resize": choice("torch", RESIZES, doc="bilinear resize of the float image (torch) or of the uint8 image "
                                               "by OpenCV, as mmcv's Resize (mmcv)"),
        "window": integer(224, 1, doc="sliding-window size"),
        "stride": integer(112, 1, doc="sliding-window stride"),
        "max_train_images": integer(None, 1, nullable=True,
                                    doc="a subset of the training split, drawn with the first seed (or seed 0)"),
        "batch_size": integer(32, 1, doc="windows per forward pass"),
        "num_workers": integer(0, 0),
        "amp": boolean(False),
    }


def training_params(min_steps: int = 1, weight_decay: float = 1e-4) -> dict[str, Param]:
    """Return the protocol parameters of a head trained by AdamW on cached windows, one head per seed."""
    return {
        **window_params(),
        "steps": integer(2000, min_steps, doc="optimiser steps of the head"),
        "train_batch_size": integer(16, 1, doc="cached windows per training step"),
        "lr": number(1e-3, above=0.0),
        "weight_decay": number(weight_decay, minimum=0.0),
        "seeds": int_list([0], doc="one head is trained per seed; metrics are their mean (and each seed's)"),
    }


@dataclass
class WindowCache:
    """Frozen features (N, gh, gw, D) of N training windows (float16, CPU) and their labels (N, h, w) (CPU), with the
    feature cache's key parts of those windows (None when they are not cacheable)."""

    features: torch.Tensor
    labels: torch.Tensor
    key_parts: dict | None = None

    def __len__(self) -> int:
        return self.features.shape[0]


def training_windows(image: torch.Tensor, label: torch.Tensor, short_side: int, window: int, stride: int,
                     mean: torch.Tensor, std: torch.Tensor, resize: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Return (windows (K, 3, w, w), labels (K, w, w)) of one uint8 image and its label map.

    The image is resized as at evaluation (bilinear), the label with nearest; an image smaller
    than the window is padded (zeros after normalisation, label ignore) up to it.
    """
    x = prepare_image(image, short_side, mean, std, resize)
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


def cache_features(model, dataset, feature_fn: FeatureFn, feature_name: str, params: dict,
                   progress: bool = True) -> WindowCache:
    """Return the WindowCache of every training window of dataset, features from feature_fn without gradients.

    feature_name identifies feature_fn in the on-disk feature cache, which keeps the entry
    (features and labels) for the next run of the same model, data and geometry. Under torchrun the
    cache is not used: every rank takes part in the gather of _compute_training_windows, so all ranks
    would first have to agree on a hit or a miss.
    """
    if getattr(dataset, "ignore_index", IGNORE_INDEX) != IGNORE_INDEX:
        raise UserError(f"dataset {getattr(dataset, 'name', '?')} has {dataset.num_classes} classes: a trained head's "
                        f"training split needs at most {IGNORE_INDEX} (label {IGNORE_INDEX} is ignored in its loss); "
                        f"train on a smaller label set, as the COCO-Stuff 171 -> ADE-847 transfer does")
    subset_seed = params["seeds"][0] if "seeds" in params else 0
    subset = subset_for_training(dataset, params.get("max_train_images"), subset_seed)

    def compute() -> dict[str, np.ndarray]:
        # the subset (a torch Subset when max_train_images cuts the dataset) has no num_classes of its own
        cache = _compute_training_windows(model, subset, feature_fn, params, progress, dataset.num_classes)
        return {"features": cache.features.numpy(), "labels": cache.labels.numpy()}

    parts = None
    if not distributed.active():
        geometry = {name: params[name] for name in ("short_side", "window", "stride", "resize", "max_train_images")}
        if params.get("max_train_images") is not None:
            geometry["subset_seed"] = subset_seed
        feature = f"{feature_name}@dense-code-{dense.CODE_VERSION}"
        parts = feature_cache.window_key_parts(model, dataset, "train", feature, geometry,
                                               precision_label(model, params["amp"]))
    arrays = feature_cache.cached_arrays(parts, compute)
    return WindowCache(torch.from_numpy(arrays["features"]), torch.from_numpy(arrays["labels"]), parts)


def cached_fit(head: nn.Module, cache: WindowCache, identity: dict, fit: Callable[[], dict[str, float]]
               ) -> dict[str, float]:
    """Return the summary numbers fit() gives after fitting head in place on cache's windows, or, when the same
    windows (cache.key_parts), identity (what else decides the head: task, parameters, seed, text) and head code
    (HEAD_CODE_VERSION) fitted it before, the summary kept with it in the feature cache, the head's state loaded
    from there. The head ends in eval mode. Windows that are not cacheable, or the cache switched off: fit() runs."""
    parts = None if cache.key_parts is None else {
        "kind": "trained-head", "windows": cache.key_parts, "head_code": HEAD_CODE_VERSION, **identity}

    def compute() -> dict[str, np.ndarray]:
        summary = fit()
        feature_cache.STATS["heads_fitted"] += 1
        state = {f"state.{k}": v.detach().cpu().numpy() for k, v in head.state_dict().items()}
        return {**state, **{f"summary.{k}": np.array([float(v)]) for k, v in summary.items()}}

    arrays = feature_cache.cached_arrays(parts, compute)
    head.load_state_dict({k[len("state."):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("state.")})
    head.eval()
    return {k[len("summary."):]: float(v[0]) for k, v in arrays.items() if k.startswith("summary.")}


def _compute_training_windows(model, dataset, feature_fn: FeatureFn, params: dict, progress: bool,
                              num_classes: int) -> WindowCache:
    """Return the WindowCache of dataset's training windows, computed.

    Under torchrun every rank cuts all windows (cheap) but runs feature_fn only on its round-robin
    share of the window batches, so each batch is the one a single process would form; every rank
    then holds all features in order (and trains the same seeded heads on them).
    """
    mean, std = normalization_tensors(model)
    window, device = params["window"], model.device
    label_dtype = torch.uint8 if num_classes < IGNORE_INDEX else torch.int16
    features, labels, pending = [], [], []
    flushed = [0]

    def flush() -> None:
        if distributed.owns(flushed[0]):
            with torch.inference_mode(), autocast_context(device, params["amp"]):
                features.append(feature_fn(torch.cat(pending)).to("cpu", torch.float16))
        flushed[0] += 1
        pending.clear()

    for items in tqdm(image_batches(dataset, images_per_step(params), params["num_workers"]),
                      disable=not progress, desc="training windows", leave=False):
        for image, label, _ in items:
            crops, crop_labels = training_windows(image.to(device), label, params["short_side"], window,
                                                  params["stride"], mean, std, params["resize"])
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


def upsampled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, normalizer: torch.Tensor | float | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (the cross-entropy summed over valid pixels (float64), the number of valid pixels, the gradient of
    that sum divided by normalizer with respect to logits (B, Q, gh, gw)) of logits upsampled bilinearly
    (align_corners=False) to labels (B, h, w); pixels labelled 255 do not count. normalizer defaults to the
    valid count (at least 1): the gradient of the mean.

    Bilinear upsampling is separable, so it is two small matrix products (rows, then columns) instead of
    F.interpolate, and the gradient is written out: softmax minus one-hot, masked, through the transposed
    products. It is computed with the value, so nothing of pixel size outlives the call.
    """
    rows = _interpolation_matrix(labels.shape[-2], logits.shape[-2], logits.device, logits.dtype)
    cols = _interpolation_matrix(labels.shape[-1], logits.shape[-1], logits.device, logits.dtype)
    upsampled = torch.matmul(torch.matmul(rows, logits), cols.T)
    # One exponential pass gives both the softmax (the gradient) and the log-sum-exp (the value).
    valid = labels != IGNORE_INDEX
    count = valid.sum()
    target = torch.where(valid, labels, 0).long()[:, None]
    shifted = upsampled.sub_(upsampled.amax(dim=1, keepdim=True))
    shifted_target = shifted.gather(1, target)
    delta = shifted.exp_()
    norm = delta.sum(dim=1, keepdim=True)
    total = ((norm.log() - shifted_target)[:, 0] * valid).sum(dtype=torch.float64)
    scale = 1.0 / (count.clamp(min=1).to(logits.dtype) if normalizer is None else normalizer)
    weight = (valid * scale).to(delta.dtype)[:, None]  # (B, 1, h, w): zero on ignored pixels
    delta.mul_(weight / norm)
    delta.scatter_add_(1, target, -weight)
    return total, count, torch.matmul(torch.matmul(rows.T, delta), cols)


@functools.lru_cache(maxsize=32)
def _interpolation_matrix(size_out: int, size_in: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Return bilinear_matrix(size_out, size_in) on device in dtype (kept: every training step asks for it)."""
    return bilinear_matrix(size_out, size_in).to(device, dtype)


class _UpsampledCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy (ignore 255) of logits (B, Q, gh, gw) bilinearly upsampled to labels (B, h, w), with the
    gradient of upsampled_cross_entropy: most of the memory traffic of autograd through interpolate and
    cross_entropy is saved. Same value and gradient (tests/test_window_features.py)."""

    @staticmethod
    def forward(ctx, logits, labels):
        total, count, gradient = upsampled_cross_entropy(logits, labels)
        ctx.save_for_backward(gradient)
        return (total / count.clamp(min=1)).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad):
        gradient, = ctx.saved_tensors
        return gradient * grad, None


def window_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the cross-entropy of patch logits (B, Q, gh, gw) upsampled bilinearly to labels (B, h, w).

    Pixels labelled ignore (255) do not count; a batch without valid pixels gives a zero loss.
    Equal (value and gradient) to F.cross_entropy(F.interpolate(logits, bilinear), labels, ignore_index=255).
    """
    return _UpsampledCrossEntropy.apply(logits, labels)


def train_head(head: nn.Module, cache: WindowCache, step_fn: Callable, params: dict, device, seed: int,
               progress: bool = True) -> list[float]:
    """Train head for params['steps'] AdamW steps on mini-batches of cached windows drawn with seed; return the
    losses.

    step_fn(head, features (B, gh, gw, D) float32, labels (B, h, w) int64) returns the loss
    of one mini-batch. Mini-batches walk through seeded permutations of the cache.
    """
    head.train()
    parameters = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=params["lr"], weight_decay=params["weight_decay"])
    steps, batch = params["steps"], min(params["train_batch_size"], len(cache))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 - step / max(steps, 1)) ** POLY_POWER)
    generator = torch.Generator().manual_seed(seed)
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


def evaluate_heads(model, dataset, feature_fn: FeatureFn, feature_name: str, heads: Sequence[HeadFn],
                   params: dict, progress: bool = True, desc: str = "segmentation") -> list[SegmentationMeter]:
    """Return per head the SegmentationMeter of its argmax predictions slid over every image of dataset.

    The frozen features of the evaluation windows are computed once (or read from the feature
    cache) and every head maps them to logits (n, C, gh, gw), exactly as zero-shot
    segmentation slides (and shards) its windows.
    """
    features = window_features(model, dataset, feature_fn, feature_name, params, "eval", progress, desc)
    return slid_meters(features, dataset, heads, class_map, params, model.device,
                       progress, desc)


def with_float_input(head: Callable[[torch.Tensor], torch.Tensor]) -> HeadFn:
    """Return a head function that evaluates head (in eval mode, no gradients) on float32 features."""

    def head_fn(features: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return head(features.float())

    return head_fn


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
