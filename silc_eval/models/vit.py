"""Forward passes through an open_clip VisionTransformer at any input size, with optional patch masking.

open_clip's own forward adds a positional embedding of the training grid, so it only takes
the training resolution. These helpers interpolate the patch part of the positional
embedding (bicubic, as DINO and the SCLIP family do) to the input's grid, and can replace
chosen patch tokens by a mask token before the transformer (masked distillation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def interpolate_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Return a (1 + gh*gw, D) positional embedding for new_grid from one for old_grid (class token kept)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    dim = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(-1, dim)
    return torch.cat([cls_pos, patch_pos], dim=0)


def embed_patches(visual, images: torch.Tensor, mask: torch.Tensor | None = None,
                  mask_token: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Return (tokens (B, 1 + gh*gw, D) after ln_pre, grid) for images of any size divisible by the patch.

    mask (B, gh*gw) bool marks patches replaced by mask_token (D,) before positions are added.
    """
    x = visual.conv1(images)
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    if mask is not None:
        x = torch.where(mask[..., None], mask_token.to(x.dtype).expand_as(x), x)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_pos_embed(visual.positional_embedding, visual.grid_size, grid).to(x.dtype)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x), grid


def forward_any_size(visual, images: torch.Tensor, mask: torch.Tensor | None = None,
                     mask_token: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Return (pooled embedding after projection (B, E), patch tokens after the final norm (B, N, D), grid)."""
    x, grid = embed_patches(visual, images, mask, mask_token)
    x = visual.transformer(x)
    pooled, tokens = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled, tokens, grid


def grid_for(visual, height: int, width: int) -> tuple[int, int]:
    """Return the patch grid an input of (height, width) gives."""
    patch = visual.conv1.kernel_size
    return height // patch[0], width // patch[1]
