"""The protocol every evaluated model satisfies: the only way tasks reach a model."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class VLModel(Protocol):
    """A two-tower image-text model as the tasks see it.

    name: display name used in tables; sha256: hex digest of the weights file (the
    model's identity in provenance); preprocess: PIL image -> CHW tensor for eval;
    normalization: the (mean, std) per channel that preprocess applies, which the
    segmentation tasks apply themselves to raw pixels.
    """

    name: str
    sha256: str
    source: str
    architecture: str
    preprocess: Callable

    @property
    def device(self) -> torch.device:
        """Return the device the weights live on."""

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Return the (mean, std) per RGB channel of the eval preprocessing."""

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Return token ids (N, context_length) for texts."""

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Return image embeddings (N, D)."""

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Return text embeddings (N, D)."""

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Return last-layer patch tokens after the final norm, before the projection, (B, gh, gw, D),
        for normalised images (B, 3, H, W) whose sides are multiples of the patch size."""

    def dense_features(self, images: torch.Tensor, variant: str = "vanilla") -> torch.Tensor:
        """Return patch embeddings in the joint image-text space (B, gh, gw, E), not normalised, of one
        training-free last-block variant (models/dense.py: vanilla, maskclip, sclip, clearclip, naclip)."""

    # Optional, for models whose dense variants share all but their last block (open_clip and hf: models do):
    # dense_trunk(images) -> dense.Trunk and dense_from_trunk(trunk, variant) -> the dense_features of those images.
    # Sliding several variants over the same windows then runs the shared blocks once (machinery/window_features.py).
