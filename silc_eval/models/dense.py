"""Dense (per-patch) image-text features from any open_clip VisionTransformer (PROTOCOLS.md section 4).

The first L-1 blocks run unchanged; the last block is replaced by one of the training-free
variants of the SCLIP family:

- ``vanilla``: the block as trained (plain patch tokens);
- ``maskclip``: the value embedding of the last block through its output projection, no
  residual, no FFN (MaskCLIP);
- ``sclip``: attention softmax(q q^T) + softmax(k k^T), residual and FFN kept (SCLIP);
- ``clearclip``: attention softmax(q q^T), no residual, no FFN (ClearCLIP);
- ``naclip``: attention softmax(k k^T + Gaussian neighbourhood bias over the patch grid,
  std 5 patches), no residual, no FFN (NACLIP without PAMR).

Every variant then applies the final LayerNorm and the image projection, so patch
features live in the text embedding space. Positional embeddings are interpolated
(bicubic, with the SCLIP reference code's scale factor (g + 0.1) / old) for any input size; pixels
past the last whole patch are dropped by the patch convolution, as in the reference code (whole-image
inference meets such sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from silc_eval.core.errors import UserError
from silc_eval.models.vit import embed_patches

VARIANTS = ("vanilla", "maskclip", "sclip", "clearclip", "naclip")
NACLIP_STD = 5.0


def check_variant(variant: str) -> str:
    """Return variant if it is a known dense variant; otherwise raise a UserError listing them."""
    if variant not in VARIANTS:
        raise UserError(f"unknown dense variant '{variant}'; expected one of {', '.join(VARIANTS)}")
    return variant


def _check_supported(visual) -> None:
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    block = blocks[-1] if blocks else None
    if not isinstance(getattr(block, "attn", None), torch.nn.MultiheadAttention) or \
            getattr(visual, "attn_pool", None) is not None:
        what = type(block).__name__ if block is not None else f"a {type(visual).__name__} image tower"
        raise UserError(f"dense features need an open_clip VisionTransformer with standard attention blocks and "
                        f"token pooling (or a hf: CLIP or SigLIP folder); this model has {what}")


def _run_blocks(transformer, blocks, x: torch.Tensor) -> torch.Tensor:
    """Run blocks on batch-first tokens x (B, N, D), honouring the transformer's layout."""
    if not getattr(transformer, "batch_first", True):
        x = x.transpose(0, 1)
    for block in blocks:
        x = block(x)
    return x if getattr(transformer, "batch_first", True) else x.transpose(0, 1)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, tokens, dim = x.shape
    return x.view(batch, tokens, num_heads, dim // num_heads).transpose(1, 2)


def neighbourhood_bias(grid: tuple[int, int], std: float = NACLIP_STD, device=None, class_token: bool = True
                       ) -> torch.Tensor:
    """Return the NACLIP attention bias exp(-d^2 / (2 std^2)) between patch positions (d in patches on the 2-D
    grid), (gh*gw)^2, or (1 + gh*gw)^2 with zeros in the class token's row and column when class_token."""
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                                indexing="ij")
    pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).float()
    bias = torch.exp(-torch.cdist(pos, pos).pow(2) / (2 * std ** 2))
    return F.pad(bias, (1, 0, 1, 0)) if class_token else bias


@dataclass(frozen=True)
class LastBlock:
    """What a training-free variant needs of a pre-norm ViT's last block, whichever library built it.

    run: the block as trained; norm: its first LayerNorm; qkv: normed tokens -> (q, k, v), each (B, N, D);
    out: the attention's output projection; residual: (x, attention output) -> x after the attention
    residual and the FFN (layer scales included); class_token: whether the sequence starts with one.
    """

    run: Callable[[torch.Tensor], torch.Tensor]
    norm: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    out: Callable[[torch.Tensor], torch.Tensor]
    residual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    num_heads: int
    class_token: bool = True


def variant_last_block(block: LastBlock, x: torch.Tensor, variant: str, grid: tuple[int, int]) -> torch.Tensor:
    """Return the batch-first tokens (B, N, D) after the variant's version of the last block."""
    if variant == "vanilla":
        return block.run(x)
    q, k, v = block.qkv(block.norm(x))
    if variant == "maskclip":
        return block.out(v)
    q, k, v = (_heads(t, block.num_heads) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])
    if variant == "sclip":
        weights = ((q @ q.transpose(-2, -1)) * scale).softmax(-1) + ((k @ k.transpose(-2, -1)) * scale).softmax(-1)
    elif variant == "clearclip":
        weights = ((q @ q.transpose(-2, -1)) * scale).softmax(-1)
    else:  # naclip
        bias = neighbourhood_bias(grid, device=x.device, class_token=block.class_token).to(x.dtype)
        weights = ((k @ k.transpose(-2, -1)) * scale + bias).softmax(-1)
    out = block.out((weights @ v).transpose(1, 2).reshape(x.shape))
    return block.residual(x, out) if variant == "sclip" else out


def _open_clip_last_block(transformer, block) -> LastBlock:
    attn = block.attn
    return LastBlock(
        run=lambda x: _run_blocks(transformer, [block], x),
        norm=block.ln_1,
        qkv=lambda y: F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1),
        out=lambda y: F.linear(y, attn.out_proj.weight, attn.out_proj.bias),
        residual=lambda x, out: _residual_ffn(block, x + block.ls_1(out)),
        num_heads=attn.num_heads)


def _residual_ffn(block, x: torch.Tensor) -> torch.Tensor:
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def dense_features(visual, images: torch.Tensor, variant: str = "vanilla") -> tuple[torch.Tensor, tuple[int, int]]:
    """Return (patch embeddings (B, gh, gw, E) in the joint space, not normalised, grid) for images (B, 3, H, W).

    The grid is (H // patch, W // patch) (pixels past the last whole patch are dropped by the patch convolution,
    as in the reference code); the positional embedding is interpolated to the grid.
    """
    check_variant(variant)
    _check_supported(visual)
    x, grid = embed_patches(visual, images, sclip_scale=True)
    blocks = visual.transformer.resblocks
    x = _run_blocks(visual.transformer, blocks[:-1], x)
    x = variant_last_block(_open_clip_last_block(visual.transformer, blocks[-1]), x, variant, grid)
    tokens = visual.ln_post(x[:, 1:])
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return tokens.reshape(images.shape[0], grid[0], grid[1], -1), grid


def patch_tokens(visual, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Return (last-layer patch tokens after the final LayerNorm (B, gh, gw, D), grid), before the projection
    (the input of a linear segmentation probe)."""
    _check_supported(visual)
    x, grid = embed_patches(visual, images, sclip_scale=True)
    x = _run_blocks(visual.transformer, visual.transformer.resblocks, x)
    tokens = visual.ln_post(x[:, 1:])
    return tokens.reshape(images.shape[0], grid[0], grid[1], -1), grid
