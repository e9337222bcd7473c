"""Forward passes through an open_clip VisionTransformer at any input size, with optional patch masking.

open_clip's own forward adds a positional embedding of the training grid, so it only takes
the training resolution. These helpers interpolate the patch part of the positional
embedding (bicubic; by size for training at other crop sizes, with the scale factor of the SCLIP
family's reference code for dense inference) to the input's grid, and can replace chosen patch
tokens by a mask token before the transformer (masked distillation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def interpolate_patch_positions(patch_pos: torch.Tensor, new_grid: tuple[int, int], sclip_scale: bool = False
                                ) -> torch.Tensor:
    """Return patch position embeddings (1, D, gh, gw) for new_grid from (1, D, old_h, old_w), bicubic.

    By size (the exact ratio, as training at other crop sizes does), or with sclip_scale as the SCLIP family's
    reference code (after DINO) does for dense inference: scale factors (gh + 0.1) / old_h and (gw + 0.1) / old_w.
    Both give the new grid's size, but the sampling positions follow the factor, so values differ slightly.
    """
    if not sclip_scale:
        return F.interpolate(patch_pos.float(), size=tuple(new_grid), mode="bicubic",
                             align_corners=False).to(patch_pos.dtype)
    old_h, old_w = patch_pos.shape[-2:]
    scale = ((new_grid[0] + 0.1) / old_h, (new_grid[1] + 0.1) / old_w)
    out = F.interpolate(patch_pos.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(out.shape[-2:]) != tuple(new_grid):  # floor(old * (new + 0.1) / old) is new; guard float rounding
        raise RuntimeError(f"positional embedding interpolated to {tuple(out.shape[-2:])}, expected {new_grid}")
    return out.to(patch_pos.dtype)


def interpolate_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                          class_token: bool = True, sclip_scale: bool = False) -> torch.Tensor:
    """Return a ([1 +] gh*gw, D) positional embedding for new_grid from one for old_grid (class token kept),
    interpolated as interpolate_patch_positions does; unchanged when the grids are equal."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix = 1 if class_token else 0
    dim = pos_embed.shape[-1]
    patch_pos = pos_embed[prefix:].reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    patch_pos = interpolate_patch_positions(patch_pos, new_grid, sclip_scale).permute(0, 2, 3, 1).reshape(-1, dim)
    return torch.cat([pos_embed[:prefix], patch_pos], dim=0)


def embed_patches(visual, images: torch.Tensor, mask: torch.Tensor | None = None,
                  mask_token: torch.Tensor | None = None, sclip_scale: bool = False
                  ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Return (tokens (B, 1 + gh*gw, D) after ln_pre, grid) for images of any size (grid = size // patch: the patch
    convolution drops pixels past the last whole patch).

    mask (B, gh*gw) bool marks patches replaced by mask_token (D,) before positions are added; sclip_scale picks
    the dense-inference interpolation of positions (interpolate_patch_positions).
    """
    x = visual.conv1(images)
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    if mask is not None:
        x = torch.where(mask[..., None], mask_token.to(x.dtype).expand_as(x), x)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_pos_embed(visual.positional_embedding, visual.grid_size, grid,
                                  sclip_scale=sclip_scale).to(x.dtype)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x), grid


def forward_any_size(visual, images: torch.Tensor, mask: torch.Tensor | None = None,
                     mask_token: torch.Tensor | None = None, sclip_scale: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Return (pooled embedding after projection (B, E), patch tokens after the final norm (B, N, D), grid);
    positions off the training grid interpolated as embed_patches does."""
    x, grid = embed_patches(visual, images, mask, mask_token, sclip_scale)
    x = visual.transformer(x)
    pooled, tokens = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled, tokens, grid


def grid_for(visual, height: int, width: int) -> tuple[int, int]:
    """Return the patch grid an input of (height, width) gives."""
    patch = visual.conv1.kernel_size
    return height // patch[0], width // patch[1]
