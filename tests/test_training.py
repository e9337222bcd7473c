"""The training loop: exact resume, divergence handling, compute accounting, open_clip-loadable output."""

import json

import open_clip
import pytest
import torch
import yaml
from safetensors.torch import load_file

from silc_eval.core.errors import UserError
from silc_eval.train.loop import train, work_folder
from silc_eval.train.recipe import load_recipe

TINY_MODEL = {"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
              "text": {"context_length": 32, "width": 32, "heads": 2, "layers": 1}}


def tiny_recipe(tmp_path, objective, steps=4, batch_size=8, **optim):
    recipe = {"name": "tiny", "objective": objective, "seed": 3, "model": TINY_MODEL,
              "data": {"source": "synthscenes", "n_train": 64, "shuffle_buffer": 16},
              "optim": {"batch_size": batch_size, "steps": steps, "warmup_steps": 1, "log_every": 1,
                        "checkpoint_every": 0, "lr": 1e-3, **optim}}
    path = tmp_path / f"recipe-{abs(hash(json.dumps(objective, sort_keys=True, default=str)))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return load_recipe(str(path))


SILC_SMALL = {"name": "silc", "views": {"n_local": 2, "local_size": 16},
              "distill": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}}


def weights(folder):
    return load_file(str(folder / "open_clip_model.safetensors"))


@pytest.mark.parametrize("objective", ["clip", SILC_SMALL])
def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path, objective):
    recipe = tiny_recipe(tmp_path, objective)
    straight = train(recipe, tmp_path / "straight", evaluate=False, progress=False)
    assert train(recipe, tmp_path / "resumed", evaluate=False, progress=False, stop_after_steps=2) is None
    assert not (tmp_path / "resumed").exists() and (work_folder(tmp_path / "resumed") / "train_state" / "last.pt").exists()
    resumed = train(recipe, tmp_path / "resumed", evaluate=False, progress=False)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert straight["loss_history"] == resumed["loss_history"]
    assert not work_folder(tmp_path / "resumed").exists()


def test_a_different_seed_gives_a_different_model(tmp_path):
    recipe = tiny_recipe(tmp_path, "clip", steps=2)
    train(recipe, tmp_path / "a", evaluate=False, progress=False)
    recipe["seed"] = 4
    train(recipe, tmp_path / "b", evaluate=False, progress=False)
    assert not torch.equal(weights(tmp_path / "a")["visual.conv1.weight"], weights(tmp_path / "b")["visual.conv1.weight"])


def test_output_loads_in_plain_open_clip_and_matches_the_card(tmp_path):
    recipe = tiny_recipe(tmp_path, "clip", steps=2)
    card = train(recipe, tmp_path / "out", evaluate=False, progress=False)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'out'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'out'}")
    tokens = tokenizer(["a red circle on grass.", "a blue star."])
    assert tokens.shape == (2, 32) and tokens.max() == tokens[0].max()  # EOS has the highest id
    with torch.no_grad():
        text = model.encode_text(tokens)
    assert text.shape == (2, 32) and torch.isfinite(text).all()
    on_disk = yaml.safe_load((tmp_path / "out" / "card.yaml").read_text())
    from silc_eval.core.fingerprint import file_sha256

    assert on_disk["weights"]["sha256"] == file_sha256(tmp_path / "out" / "open_clip_model.safetensors")
    assert card["compute"]["images_seen"] == 2 * 8
    assert card["compute"]["views_per_image"] == 1


def test_compute_accounting_counts_extra_views(tmp_path):
    clip = train(tiny_recipe(tmp_path, "clip", steps=1), tmp_path / "clip", evaluate=False, progress=False)
    silc = train(tiny_recipe(tmp_path, SILC_SMALL, steps=1), tmp_path / "silc", evaluate=False, progress=False)
    assert silc["compute"]["views_per_image"] == 4
    assert silc["compute"]["view_sizes"] == [32, 32, 16, 16]
    assert clip["compute"]["training_flops"] > 0
    # two global views (plus two small local views and the teacher) cost well over one view
    assert silc["compute"]["training_flops"] > 1.5 * clip["compute"]["training_flops"]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from silc_eval.train import objectives

    original = objectives.ContrastiveObjective.losses

    def poisoned(self, outputs, batch, step):
        losses = original(self, outputs, batch, step)
        if step == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(objectives.ContrastiveObjective, "losses", poisoned)
    recipe = tiny_recipe(tmp_path, "clip", steps=5, checkpoint_every=2)
    with pytest.raises(UserError, match="diverged at step 3.*last good checkpoint kept"):
        train(recipe, tmp_path / "out", evaluate=False, progress=False)
    state = torch.load(work_folder(tmp_path / "out") / "train_state" / "last.pt", weights_only=False)
    assert state["run"]["step"] == 2
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_different_recipe(tmp_path):
    recipe = tiny_recipe(tmp_path, "clip", steps=4)
    train(recipe, tmp_path / "out", evaluate=False, progress=False, stop_after_steps=1)
    recipe["optim"]["lr"] = 5e-3
    with pytest.raises(UserError, match="different recipe"):
        train(recipe, tmp_path / "out", evaluate=False, progress=False)
    assert train(recipe, tmp_path / "out", evaluate=False, progress=False, restart=True) is not None


def test_malformed_recipes_are_one_line_user_errors(tmp_path):
    (tmp_path / "extra.yaml").write_text("name: x\nobjective: clip\nmodel: {}\ndata: {}\noptim: {}\ncolour: red\n")
    with pytest.raises(UserError, match="extra.yaml: unknown key 'colour' in recipe"):
        load_recipe(str(tmp_path / "extra.yaml"))
    (tmp_path / "missing.yaml").write_text("name: x\nobjective: clip\nmodel: {}\ndata: {}\n")
    with pytest.raises(UserError, match="missing field 'optim'"):
        load_recipe(str(tmp_path / "missing.yaml"))
    (tmp_path / "optim.yaml").write_text("name: x\nobjective: clip\nmodel: {}\ndata: {}\noptim: {lr_max: 1}\n")
    with pytest.raises(UserError, match="unknown key 'lr_max' in optim"):
        load_recipe(str(tmp_path / "optim.yaml"))
    with pytest.raises(UserError, match="unknown recipe 'nope'.*clip"):
        load_recipe("nope")
