"""Dense (per-patch) image-text features from any open_clip VisionTransformer (benchmarks/PROTOCOLS.md section 4.2).

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
features live in the text embedding space. open_clip's timm image towers (its SigLIP
architectures, hence `big_vision:` checkpoints) pool with an attention head (MAP) instead of a
projection: each patch token is read through that head alone, the pool's value and output
projections and its residual MLP (what the head gives when it attends to that one token),
then open_clip's head, as the Hugging Face SigLIP path does. Positional embeddings are interpolated
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
from silc_eval.models.vit import embed_patches, interpolate_pos_embed

VARIANTS = ("vanilla", "maskclip", "sclip", "clearclip", "naclip")
# Bumped whenever the features this module computes change for the same weights and windows: cached window
# features (machinery/window_features.py) carry it in their key, so a change never serves stale ones.
CODE_VERSION = 2
NACLIP_STD = 5.0


def check_variant(variant: str) -> str:
    """Return variant if it is a known dense variant; otherwise raise a UserError listing them."""
    if variant not in VARIANTS:
        raise UserError(f"unknown dense variant '{variant}'; expected one of {', '.join(VARIANTS)}")
    return variant


def _check_supported(visual) -> None:
    if hasattr(visual, "trunk"):
        _check_timm(visual)
        return
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


@dataclass(frozen=True)
class Trunk:
    """What every dense variant shares: the batch-first tokens (B, N, D) after the first L-1 blocks, and the grid."""

    tokens: torch.Tensor
    grid: tuple[int, int]


def dense_trunk(visual, images: torch.Tensor) -> Trunk:
    """Return the Trunk of images (B, 3, H, W): patches embedded (positions interpolated to the grid (H // patch,
    W // patch); pixels past the last whole patch are dropped by the patch convolution, as in the reference code)
    and run through every block but the last."""
    _check_supported(visual)
    if hasattr(visual, "trunk"):
        x, grid = _timm_tokens(visual.trunk, images)
        return Trunk(_run_blocks(visual.trunk, visual.trunk.blocks[:-1], x), grid)
    x, grid = embed_patches(visual, images, sclip_scale=True)
    return Trunk(_run_blocks(visual.transformer, visual.transformer.resblocks[:-1], x), grid)


def features_from_trunk(visual, shared: Trunk, variant: str = "vanilla") -> torch.Tensor:
    """Return patch embeddings (B, gh, gw, E) in the joint space, not normalised, of one variant's last block run on
    a Trunk."""
    check_variant(variant)
    if hasattr(visual, "trunk"):
        return _timm_features_from_trunk(visual, shared, variant)
    block = _open_clip_last_block(visual.transformer, visual.transformer.resblocks[-1])
    x = variant_last_block(block, shared.tokens, variant, shared.grid)
    tokens = visual.ln_post(x[:, 1:])
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return tokens.reshape(x.shape[0], shared.grid[0], shared.grid[1], -1)


def dense_features(visual, images: torch.Tensor, variant: str = "vanilla") -> tuple[torch.Tensor, tuple[int, int]]:
    """Return (patch embeddings (B, gh, gw, E) in the joint space, not normalised, grid) for images (B, 3, H, W):
    features_from_trunk of their trunk."""
    check_variant(variant)
    shared = dense_trunk(visual, images)
    return features_from_trunk(visual, shared, variant), shared.grid


def patch_tokens(visual, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Return (last-layer patch tokens after the final LayerNorm (B, gh, gw, D), grid), before the projection
    (the input of a linear segmentation probe)."""
    _check_supported(visual)
    if hasattr(visual, "trunk"):
        trunk = visual.trunk
        x, grid = _timm_tokens(trunk, images)
        x = trunk.norm(_run_blocks(trunk, trunk.blocks, x))
        return x[:, trunk.num_prefix_tokens:].reshape(images.shape[0], grid[0], grid[1], -1), grid
    x, grid = embed_patches(visual, images, sclip_scale=True)
    x = _run_blocks(visual.transformer, visual.transformer.resblocks, x)
    tokens = visual.ln_post(x[:, 1:])
    return tokens.reshape(images.shape[0], grid[0], grid[1], -1), grid


# ----------------------------------------------------------------------------- timm towers (open_clip's TimmModel)

def _check_timm(visual) -> None:
    """Raise a UserError unless visual is a TimmModel around a plain timm ViT this module can read."""
    trunk = visual.trunk
    blocks = getattr(trunk, "blocks", None)
    attn = getattr(blocks[-1], "attn", None) if blocks is not None and len(blocks) else None
    plain = attn is not None and hasattr(attn, "qkv") and all(
        isinstance(getattr(attn, name, torch.nn.Identity()), torch.nn.Identity) for name in ("q_norm", "k_norm", "norm"))
    plain = plain and getattr(attn, "gate", None) is None and getattr(trunk, "pos_embed", None) is not None
    pool = getattr(trunk, "global_pool", None)
    if not plain or pool not in ("map", "token", "avg") or not isinstance(getattr(trunk, "fc_norm", None),
                                                                          torch.nn.Identity):
        raise UserError(f"dense features of a timm image tower need a plain timm VisionTransformer (fused qkv, no "
                        f"q/k norm, fc_norm off) pooled by map, token or avg; this model's trunk is "
                        f"{type(trunk).__name__} with global_pool {pool!r}")


def _timm_tokens(trunk, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Return (tokens (B, prefix + gh*gw, D) after norm_pre, grid): patches of any grid, positions interpolated
    with the SCLIP family's scale factor (vit.py) when the grid is not the training grid."""
    patch = trunk.patch_embed
    x = patch.proj(images.to(patch.proj.weight.dtype))
    grid = tuple(x.shape[-2:])
    x = patch.norm(x.flatten(2).transpose(1, 2))
    prefix = trunk.num_prefix_tokens
    embedded_prefix = 0 if getattr(trunk, "no_embed_class", False) else prefix
    positions = trunk.pos_embed[0]
    old = tuple(patch.grid_size)
    positions = interpolate_pos_embed(positions, old, grid, class_token=False, sclip_scale=True) \
        if embedded_prefix == 0 else torch.cat([positions[:embedded_prefix], interpolate_pos_embed(
            positions[embedded_prefix:], old, grid, class_token=False, sclip_scale=True)])
    tokens = [t.expand(x.shape[0], -1, -1) for t in (trunk.cls_token, getattr(trunk, "reg_token", None))
              if t is not None]
    if embedded_prefix:
        x = torch.cat(tokens + [x], dim=1) + positions[None]
    else:
        x = torch.cat(tokens + [x + positions[None]], dim=1)
    return trunk.norm_pre(x), grid


def _timm_last_block(trunk, block) -> LastBlock:
    attn = block.attn
    return LastBlock(
        run=block, norm=block.norm1,
        qkv=lambda y: attn.qkv(y).chunk(3, dim=-1),
        out=attn.proj,
        residual=lambda x, out: (lambda h: h + block.ls2(block.mlp(block.norm2(h))))(x + block.ls1(out)),
        num_heads=attn.num_heads, class_token=trunk.num_prefix_tokens > 0)


def map_head_per_token(pool, tokens: torch.Tensor) -> torch.Tensor:
    """Return each token (B, N, D) read through a timm attention-pool head (AttentionPoolLatent) alone: its value and
    output projections and its residual MLP, what the head returns when it attends to that one token."""
    dim = tokens.shape[-1]
    values = F.linear(tokens, pool.kv.weight[dim:], None if pool.kv.bias is None else pool.kv.bias[dim:])
    pooled = pool.proj(values)
    return pooled + pool.mlp(pool.norm(pooled)) if pool.mlp is not None else pooled


def _timm_features_from_trunk(visual, shared: Trunk, variant: str) -> torch.Tensor:
    vit = visual.trunk
    x = variant_last_block(_timm_last_block(vit, vit.blocks[-1]), shared.tokens, variant, shared.grid)
    tokens = vit.norm(x)[:, vit.num_prefix_tokens:]
    if vit.global_pool == "map":
        tokens = map_head_per_token(vit.attn_pool, tokens)
    tokens = visual.head(vit.head(tokens))
    return tokens.reshape(x.shape[0], shared.grid[0], shared.grid[1], -1)
