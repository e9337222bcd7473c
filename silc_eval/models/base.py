"""The protocol every evaluated model satisfies."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class VLModel(Protocol):
    """A two-tower image-text model as the tasks see it.

    name: display name used in tables; sha256: hex digest of the weights file (the
    model's identity in provenance); preprocess: PIL image -> CHW tensor for eval.
    Dense (per-patch) features are added by the segmentation work through the same adapter.
    """

    name: str
    sha256: str
    source: str
    preprocess: Callable

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Return token ids (N, context_length) for texts."""

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Return image embeddings (N, D)."""

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Return text embeddings (N, D)."""

    @property
    def device(self) -> torch.device:
        """Return the device the weights live on."""
