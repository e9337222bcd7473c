"""The open_clip implementation of the VLModel protocol."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import Normalize

from silc_eval.models import dense

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class OpenClipModel:
    """Wraps an open_clip model, its tokenizer and its eval preprocessing.

    precision "fp16" (a model built with open_clip's precision="fp16"): images enter the towers in float16, as
    OpenAI CLIP's reference code casts them; every output is returned in float32, so normalisation, similarities
    and everything after them run in float32.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, preprocess: Callable,
                 name: str, sha256: str, source: str, architecture: str, family: str = "open_clip",
                 precision: str = "fp32"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        self.sha256 = sha256
        self.source = source
        self.architecture = architecture
        self.family = family
        self.precision = precision
        self.input_dtype = torch.float16 if precision == "fp16" else torch.float32

    @property
    def device(self) -> torch.device:
        """Return the device of the model's first parameter."""
        return next(self.model.parameters()).device

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Return the (mean, std) of the preprocessing's Normalize (OpenAI CLIP's when it has none)."""
        for transform in getattr(self.preprocess, "transforms", []):
            if isinstance(transform, Normalize):
                return tuple(transform.mean), tuple(transform.std)
        return OPENAI_MEAN, OPENAI_STD

    def to(self, device: str | torch.device) -> "OpenClipModel":
        """Move the weights to device; returns self."""
        self.model.to(device)
        return self

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Return token ids for texts with the checkpoint's own tokenizer."""
        return self.tokenizer(list(texts))

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Return image embeddings (N, D), L2-normalised if asked."""
        features = self.model.encode_image(images.to(self.input_dtype)).float()
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Return text embeddings (N, D), L2-normalised if asked."""
        features = self.model.encode_text(tokens).float()
        return F.normalize(features, dim=-1) if normalize else features

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Return last-layer patch tokens (B, gh, gw, D) after the final LayerNorm, before the projection."""
        return dense.patch_tokens(self.model.visual, images.to(self.input_dtype))[0].float()

    def dense_features(self, images: torch.Tensor, variant: str = "vanilla") -> torch.Tensor:
        """Return projected patch embeddings (B, gh, gw, E) of a dense variant (models/dense.py)."""
        return self.dense_from_trunk(self.dense_trunk(images), dense.check_variant(variant))

    def dense_trunk(self, images: torch.Tensor) -> dense.Trunk:
        """Return what every dense variant shares for images: the tokens after all blocks but the last."""
        return dense.dense_trunk(self.model.visual, images.to(self.input_dtype))

    def dense_from_trunk(self, shared: dense.Trunk, variant: str = "vanilla") -> torch.Tensor:
        """Return dense_features of the images whose dense_trunk is shared, (B, gh, gw, E) float32."""
        return dense.features_from_trunk(self.model.visual, shared, variant).float()
