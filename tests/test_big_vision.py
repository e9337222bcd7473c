"""big_vision .npz checkpoints (big_vision:ARCH:FILE.npz): a tiny SigLIP built by open_clip (timm image tower with a
MAP head, no-causal-mask text tower) is written out in big_vision's parameter layout and read back through
open_clip's load_big_vision_weights, giving identical features; its dense features are the timm trunk's own
tokens read through its MAP head; bad specs get one line and exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_fails_cleanly
from silc_eval.core.errors import UserError
from silc_eval.models.loading import load_model, parse_model_spec

ARCH = "silc-test-ViT-SigLIP"
TIMM_NAME = "silc_test_vit_siglip"


def register_tiny_siglip() -> None:
    """Register a 2-block, 32-wide timm SigLIP ViT (no class token, MAP pooling) and an open_clip config over it."""
    import open_clip
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    if ARCH in open_clip.list_models():
        return

    def silc_test_vit_siglip(pretrained=False, **kwargs):
        kwargs = {"num_classes": 0, "global_pool": "map",
                  **{k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}}
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                                 class_token=False, **kwargs)

    silc_test_vit_siglip.__name__ = TIMM_NAME
    register_model(silc_test_vit_siglip)
    config = {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
              "vision_cfg": {"image_size": 32, "timm_model_name": TIMM_NAME, "timm_model_pretrained": False,
                             "timm_pool": "map", "timm_proj": "none"},
              "text_cfg": {"context_length": 64, "vocab_size": 48, "hf_tokenizer_name": "not/on-the-network",
                           "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 32, "heads": 2, "layers": 2,
                           "mlp_ratio": 2.0, "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                           "norm_kwargs": {"eps": 1e-6}}}
    open_clip.factory._MODEL_CONFIGS[ARCH] = config


def _attention(prefix: str, qkv_weight, qkv_bias, out_weight, out_bias, heads: int) -> dict[str, np.ndarray]:
    dim = out_weight.shape[0]
    entries = {}
    for name, weight, bias in zip(("query", "key", "value"), qkv_weight.chunk(3), qkv_bias.chunk(3)):
        entries[f"{prefix}{name}/kernel"] = weight.T.reshape(weight.shape[1], heads, -1)
        entries[f"{prefix}{name}/bias"] = bias.reshape(heads, -1)
    entries[f"{prefix}out/kernel"] = out_weight.reshape(dim, heads, -1).permute(1, 2, 0)
    entries[f"{prefix}out/bias"] = out_bias
    return entries


def _norm(prefix: str, norm) -> dict:
    return {f"{prefix}scale": norm.weight, f"{prefix}bias": norm.bias}


def _mlp(prefix: str, first, second) -> dict:
    return {f"{prefix}Dense_0/kernel": first.weight.T, f"{prefix}Dense_0/bias": first.bias,
            f"{prefix}Dense_1/kernel": second.weight.T, f"{prefix}Dense_1/bias": second.bias}


def big_vision_arrays(model) -> dict[str, np.ndarray]:
    """Return an open_clip SigLIP's weights under big_vision's parameter names and layouts."""
    trunk, text, heads = model.visual.trunk, model.text, model.visual.trunk.blocks[0].attn.num_heads
    w = {"img/embedding/kernel": trunk.patch_embed.proj.weight.permute(2, 3, 1, 0),
         "img/embedding/bias": trunk.patch_embed.proj.bias, "img/pos_embedding": trunk.pos_embed,
         **_norm("img/Transformer/encoder_norm/", trunk.norm)}
    for i, block in enumerate(trunk.blocks):
        prefix = f"img/Transformer/encoderblock_{i}/"
        w.update({**_norm(prefix + "LayerNorm_0/", block.norm1), **_norm(prefix + "LayerNorm_1/", block.norm2),
                  **_mlp(prefix + "MlpBlock_0/", block.mlp.fc1, block.mlp.fc2),
                  **_attention(prefix + "MultiHeadDotProductAttention_0/", block.attn.qkv.weight, block.attn.qkv.bias,
                               block.attn.proj.weight, block.attn.proj.bias, heads)})
    pool, prefix = trunk.attn_pool, "img/MAPHead_0/"
    q_weight, kv_weight = pool.q.weight, pool.kv.weight
    w.update({f"{prefix}probe": pool.latent, **_norm(prefix + "LayerNorm_0/", pool.norm),
              **_mlp(prefix + "MlpBlock_0/", pool.mlp.fc1, pool.mlp.fc2),
              **_attention(prefix + "MultiHeadDotProductAttention_0/", torch.cat([q_weight, kv_weight]),
                           torch.cat([pool.q.bias, pool.kv.bias]), pool.proj.weight, pool.proj.bias, heads)})
    w.update({"txt/Embed_0/embedding": text.token_embedding.weight, "txt/pos_embedding": text.positional_embedding[None],
              **_norm("txt/Encoder_0/encoder_norm/", text.ln_final),
              "txt/head/kernel": text.text_projection.weight.T, "txt/head/bias": text.text_projection.bias,
              "b": model.logit_bias.reshape(1), "t": model.logit_scale.reshape(1)})
    for i, block in enumerate(text.transformer.resblocks):
        prefix = f"txt/Encoder_0/encoderblock_{i}/"
        w.update({**_norm(prefix + "LayerNorm_0/", block.ln_1), **_norm(prefix + "LayerNorm_1/", block.ln_2),
                  **_mlp(prefix + "MlpBlock_0/", block.mlp.c_fc, block.mlp.c_proj),
                  **_attention(prefix + "MultiHeadDotProductAttention_0/", block.attn.in_proj_weight,
                               block.attn.in_proj_bias, block.attn.out_proj.weight, block.attn.out_proj.bias, heads)})
    return {k: v.detach().numpy().copy() for k, v in w.items()}


@pytest.fixture(scope="module")
def big_vision_checkpoint(tmp_path_factory):
    """(the .npz path, the open_clip model it was written from) with a SigLIP tokenizer beside it."""
    import open_clip
    from test_hf_models import build_siglip_folder

    register_tiny_siglip()
    root = tmp_path_factory.mktemp("big_vision")
    tokenizer_source = build_siglip_folder(root / "siglip-hf")
    folder = root / "checkpoint"
    folder.mkdir()
    for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_source / name).is_file():
            shutil.copy(tokenizer_source / name, folder / name)
    torch.manual_seed(5)
    model = open_clip.create_model(ARCH).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-7.0)
    np.savez(folder / "siglip.npz", **big_vision_arrays(model))
    return folder / "siglip.npz", model


def test_a_big_vision_npz_loads_back_to_identical_features(big_vision_checkpoint):
    path, written = big_vision_checkpoint
    model = load_model(f"big_vision:{ARCH}:{path}")
    assert model.family == "big_vision" and model.architecture == ARCH
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), written.encode_image(images), atol=1e-6)
        tokens = model.tokenize(["A photo of a Red Star!", "the circle"])
        assert tokens.shape == (2, 64)
        assert torch.allclose(model.encode_text(tokens), written.encode_text(tokens), atol=1e-6)
    assert float(model.model.logit_bias) == pytest.approx(-7.0) and float(model.model.logit_scale) == \
        pytest.approx(2.3)
    # the architecture's canonicalisation (open_clip's clean="canonicalize"): case and punctuation do not count
    assert torch.equal(model.tokenize(["A PHOTO, of the STAR!"]), model.tokenize(["a photo of the star"]))


def test_timm_tower_patch_tokens_and_map_head_are_the_trunks_own(big_vision_checkpoint):
    from silc_eval.models import dense

    path, _ = big_vision_checkpoint
    model = load_model(f"big_vision:{ARCH}:{path}")
    visual = model.model.visual
    trunk = visual.trunk
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.patch_tokens(images).reshape(2, 16, -1)
        assert torch.allclose(tokens, trunk.forward_features(images), atol=1e-5)
        per_token = dense.map_head_per_token(trunk.attn_pool, tokens)
        alone = torch.stack([trunk.attn_pool(tokens[:, i:i + 1]) for i in range(16)], dim=1)  # one-token sequences
        assert torch.allclose(per_token, alone, atol=1e-5)
        vanilla = model.dense_features(images, "vanilla").reshape(2, 16, -1)
        assert torch.allclose(vanilla, visual.head(per_token), atol=1e-5)


def test_timm_last_block_pieces_compose_to_the_block(big_vision_checkpoint):
    from silc_eval.models import dense

    _, written = big_vision_checkpoint
    trunk = written.visual.trunk
    block = dense._timm_last_block(trunk, trunk.blocks[-1])
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        q, k, v = (dense._heads(t, block.num_heads) for t in block.qkv(block.norm(x)))
        attention = ((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5).softmax(-1) @ v
        rebuilt = block.residual(x, block.out(attention.transpose(1, 2).reshape(x.shape)))
        assert torch.allclose(rebuilt, trunk.blocks[-1](x), atol=1e-5)
    assert block.class_token is False  # SigLIP: no class token, so NACLIP's bias has no class row


def test_every_variant_runs_off_the_training_grid_on_a_timm_tower(big_vision_checkpoint):
    path, _ = big_vision_checkpoint
    model = load_model(f"big_vision:{ARCH}:{path}")
    images = torch.randn(1, 3, 48, 40)
    outputs = {}
    with torch.no_grad():
        for variant in ("vanilla", "maskclip", "sclip", "clearclip", "naclip"):
            outputs[variant] = model.dense_features(images, variant)
            assert outputs[variant].shape == (1, 6, 5, 32) and torch.isfinite(outputs[variant]).all()
    assert len({round(float(o.sum()), 4) for o in outputs.values()}) == 5  # five different readings


def test_dense_benchmarks_run_on_a_big_vision_model(big_vision_checkpoint, tmp_path):
    from silc_eval.cli import main

    path, _ = big_vision_checkpoint
    out = tmp_path / "out"
    assert main(["run", "--model", f"big_vision:{ARCH}:{path}", "--benchmark", "synthscenes-zeroshot-seg-naclip",
                 "--benchmark", "synthscenes-linear-seg", "--limit", "12", "--output", str(out),
                 "--no-progress"]) == 0
    records = {p.stem: json.loads(p.read_text()) for p in (out / "records").rglob("*.json")}
    assert set(records) == {"synthscenes-zeroshot-seg-naclip", "synthscenes-linear-seg"}
    assert all(0.0 <= r["metrics"]["mIoU"] <= 1.0 for r in records.values())


@pytest.mark.parametrize("spec, expected", [
    ("big_vision:ViT-B-32:{npz}", r"not an open_clip SigLIP-family architecture"),
    ("big_vision:{arch}:{missing}", r"big_vision checkpoint not found"),
    ("big_vision:{arch}:{lonely}", r"no tokenizer beside"),
])
def test_bad_big_vision_specs_get_one_line_and_exit_code_2(big_vision_checkpoint, tmp_path, capsys, spec, expected):
    path, _ = big_vision_checkpoint
    lonely = tmp_path / "alone" / "siglip.npz"
    lonely.parent.mkdir()
    shutil.copy(path, lonely)
    spec = spec.format(npz=path, arch=ARCH, missing=tmp_path / "nothing.npz", lonely=lonely)
    with pytest.raises(UserError):
        parse_model_spec(spec)
    assert_fails_cleanly(capsys, ["run", "--model", spec, "--benchmark", "synthscenes-zeroshot",
                                  "--output", str(tmp_path / "out"), "--no-progress"], expected,
                         watch=[tmp_path / "alone"])


def test_the_record_names_the_big_vision_family(big_vision_checkpoint):
    from silc_eval.evaluate.records import model_entry

    path, _ = big_vision_checkpoint
    entry = model_entry(load_model(f"big_vision:{ARCH}:{path}"))
    assert entry["family"] == "big_vision" and len(entry["sha256"]) == 64
    json.dumps(entry)


def test_spec_path_is_the_npz(big_vision_checkpoint):
    path, _ = big_vision_checkpoint
    parsed = parse_model_spec(f"big_vision:{ARCH}:{path}")
    assert parsed.kind == "big_vision" and parsed.path == Path(path) and parsed.name == f"{ARCH}:siglip.npz"
