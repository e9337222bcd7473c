"""Sibling dense features over the same windows run their shared blocks once.

Zero-shot segmentation slides five last-block variants (models/dense.py) over the same windows of the same
split, one benchmark after another; they differ only in the last block. A feature given as a SharedTrunk
(trunk then finish) is computed through a Session: the first window set computed keeps, per window batch, the
trunk's output (the tokens after the shared blocks) in memory with a sample of the batch's windows; the next
feature of the same window set (same key: model weights, dataset, split, geometry, window batch size,
precision, trunk) reads them instead of running the shared blocks again. A batch whose windows differ from the
recorded ones (shape, dtype or sampled values) is computed, so a replay gives what computing gives. One window
set is kept, the last, within $SILC_EVAL_TRUNK_MEMO_MAX_GB gigabytes (1 by default); a set that would not fit is
not kept. Off with the feature cache (`--no-feature-cache`), which promises that every feature is computed afresh.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from silc_eval.features import cache as feature_cache

LIMIT_ENV = "SILC_EVAL_TRUNK_MEMO_MAX_GB"
DEFAULT_LIMIT_GB = 1.0
SAMPLED_VALUES = 4096  # values of a window batch compared on replay


@dataclass(frozen=True)
class SharedTrunk:
    """A window feature computed as finish(trunk(windows)), whose trunk sibling features share (name says which)."""

    name: str
    trunk: Callable[[torch.Tensor], Any]
    finish: Callable[[Any], torch.Tensor]


def dense_variant(model, variant: str) -> SharedTrunk | None:
    """Return model's dense variant as a SharedTrunk (dense_trunk, then dense_from_trunk), or None for a model that
    computes dense features in one piece."""
    if not (hasattr(model, "dense_trunk") and hasattr(model, "dense_from_trunk")):
        return None
    return SharedTrunk("dense-trunk", model.dense_trunk, lambda shared: model.dense_from_trunk(shared, variant))


def limit_bytes() -> int:
    """Return how many bytes of trunk outputs may be kept: $SILC_EVAL_TRUNK_MEMO_MAX_GB gigabytes, 1 by default."""
    return int(float(os.environ.get(LIMIT_ENV, DEFAULT_LIMIT_GB)) * 1e9)


def window_sample(windows: torch.Tensor) -> tuple[tuple[int, ...], torch.dtype, torch.Tensor]:
    """Return what identifies a batch of windows cheaply on any device: shape, dtype and about SAMPLED_VALUES of its
    values at fixed strided positions (windows of other images or in another order differ there)."""
    flat = windows.reshape(-1)
    step = max(1, flat.numel() // SAMPLED_VALUES)
    return tuple(windows.shape), windows.dtype, flat[::step].clone()


def _same_sample(a, b) -> bool:
    return a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def _nbytes(output: Any) -> int:
    tensor = getattr(output, "tokens", output)
    return tensor.numel() * tensor.element_size()


@dataclass
class _Recorded:
    key: str
    batches: list[tuple[tuple, Any]] = field(default_factory=list)
    nbytes: int = 0
    complete: bool = False


_KEPT: _Recorded | None = None
STATS = {"batches_replayed": 0, "batches_computed": 0}


def forget() -> None:
    """Drop the kept window set; returns nothing."""
    global _KEPT
    _KEPT = None


class Session:
    """The feature function of one pass over a window set: replays the kept trunks of the same key, or computes
    and records them. Call close() after the pass."""

    def __init__(self, key: str, shared: SharedTrunk):
        global _KEPT
        self.shared, self.position = shared, 0
        self.replaying = _KEPT is not None and _KEPT.key == key and _KEPT.complete
        if not self.replaying:
            _KEPT = _Recorded(key) if feature_cache.enabled() else None
        self.memo = _KEPT

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """Return the feature of windows (a batch, in the pass's order)."""
        index, self.position = self.position, self.position + 1
        if self.memo is None:
            output = self._computed(windows)
        elif self.replaying:
            if index < len(self.memo.batches) and _same_sample(self.memo.batches[index][0], window_sample(windows)):
                output = self.memo.batches[index][1]
                STATS["batches_replayed"] += 1
            else:
                output = self._computed(windows)
        else:
            output = self._computed(windows)
            self._record(window_sample(windows), output)
        return self.shared.finish(output)

    def _computed(self, windows: torch.Tensor) -> Any:
        STATS["batches_computed"] += 1
        return self.shared.trunk(windows)

    def _record(self, sample: tuple, output: Any) -> None:
        global _KEPT
        self.memo.batches.append((sample, output))
        self.memo.nbytes += _nbytes(output)
        if self.memo.nbytes > limit_bytes():
            _KEPT = self.memo = None

    def close(self, complete: bool) -> None:
        """End the pass; a recording is kept only when the pass went over every window (complete)."""
        global _KEPT
        if self.memo is not None and not self.replaying:
            if complete and _KEPT is self.memo:
                self.memo.complete = True
            elif _KEPT is self.memo:
                _KEPT = None
        self.memo = None  # later calls (a streamed pass) compute
