"""Small trainable heads: the DINO-style projection head and the distillation regression head."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ProjectionHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> cosine scores against K normalised prototypes (DINO's head).

    Normalising the prototype matrix plays the role of DINO's weight-normalised last
    layer with its gain fixed at 1.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 256, bottleneck_dim: int = 64, layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1)
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.GELU()]
        blocks.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*blocks)
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck_dim) * 0.02)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return (N, K) scores of inputs (N, in_dim)."""
        z = F.normalize(self.mlp(x), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).T


def regression_head(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """Return the head mapping student tokens to teacher features: 'linear' or 'mlp' (one hidden GELU layer)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, 2 * in_dim), nn.GELU(), nn.Linear(2 * in_dim, out_dim))
    raise ValueError(f"unknown head '{kind}'; expected linear or mlp")
