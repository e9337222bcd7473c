"""The training loop: exact resume, divergence handling, compute accounting, open_clip-loadable output."""

import errno
import json
from pathlib import Path

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


def test_sigterm_stops_after_the_step_and_the_rerun_resumes_exactly(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from silc_eval.cli import main
    from silc_eval.train import loop

    recipe = tiny_recipe(tmp_path, "clip")
    straight = train(recipe, tmp_path / "straight", evaluate=False, progress=False)
    updates = []
    original = loop.apply_update

    def update_then_signal(*args):
        original(*args)
        updates.append(1)
        if len(updates) == 2:  # the signal arrives while step 2 is under way
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "apply_update", update_then_signal)
    handler_before = signal.getsignal(signal.SIGTERM)
    command = ["train", "--recipe", recipe["file"], "--output", str(tmp_path / "resumed"), "--no-eval"]
    assert main(command) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "SIGTERM: stopped at step 2 of 4" in err and "resumes" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is handler_before and len(updates) == 2
    assert not (tmp_path / "resumed").exists() and (work_folder(tmp_path / "resumed") / "train_state" / "last.pt").exists()
    assert main(command) == 0 and len(updates) == 4  # two more steps: the rerun resumed at step 2
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert yaml.safe_load((tmp_path / "resumed" / "card.yaml").read_text())["loss_history"] == straight["loss_history"]


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


def all_finite(tensors):
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def kept_state(output):
    """Return the last good checkpoint of output's work folder (loaded as train does: weights only)."""
    state_dir = work_folder(output) / "train_state"
    assert not (state_dir / "next.pt").exists() and not list(state_dir.glob(".*.tmp"))
    return torch.load(state_dir / "last.pt", weights_only=True)


@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, checkpoint_every):
    from silc_eval.train import objectives

    original = objectives.ContrastiveObjective.losses

    def poisoned(self, outputs, batch, step):
        losses = original(self, outputs, batch, step)
        if step == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(objectives.ContrastiveObjective, "losses", poisoned)
    recipe = tiny_recipe(tmp_path, "clip", steps=5, checkpoint_every=checkpoint_every)
    with pytest.raises(UserError, match=r"diverged at step 4/5: the loss is nan; the last good checkpoint \(step 2\) "
                                        r"is kept in .*lower optim\.lr \(now 0\.001\).* in .*recipe-\d+\.yaml and rerun the "
                                        r"same command, which resumes from it") as caught:
        train(recipe, tmp_path / "out", evaluate=False, progress=False)
    assert "\n" not in str(caught.value)
    # With a checkpoint every step, step 3's was written, but the weights it holds gave the NaN loss: a checkpoint
    # becomes the one to resume from only once the next step has shown them sound.
    state = kept_state(tmp_path / "out")
    assert state["run"]["step"] == 2 and all_finite(state["student"].values())
    assert not (tmp_path / "out").exists()


def test_nonfinite_gradients_of_a_finite_loss_stop_before_the_update(tmp_path, monkeypatch):
    """The last step has a finite loss and NaN gradients: nothing NaN is stepped into, checkpointed or exported."""
    from silc_eval.train import objectives

    original = objectives.ContrastiveObjective.losses

    def poisoned(self, outputs, batch, step):
        losses = original(self, outputs, batch, step)
        if step == 3:  # value 0, gradient 0 * inf = NaN
            scale = outputs["logit_scale"]
            losses["loss"] = losses["loss"] + 0.0 * (scale - scale.detach()).sqrt()
        return losses

    monkeypatch.setattr(objectives.ContrastiveObjective, "losses", poisoned)
    recipe = tiny_recipe(tmp_path, "clip", steps=4, checkpoint_every=2)
    with pytest.raises(UserError, match=r"diverged at step 4/4: the gradient of clip\.logit_scale is not finite "
                                        r"\(loss [0-9.]+\); the last good checkpoint \(step 2\) is kept"):
        train(recipe, tmp_path / "out", evaluate=False, progress=False)
    state = kept_state(tmp_path / "out")
    assert state["run"]["step"] == 2 and all_finite(state["student"].values())
    assert not (tmp_path / "out").exists()


def test_weights_that_turn_nonfinite_in_the_update_are_never_checkpointed(tmp_path, monkeypatch):
    from silc_eval.train import loop

    original = loop.apply_update
    calls = []

    def poisoned(student, optimizer, objective, grad_clip):
        original(student, optimizer, objective, grad_clip)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                student.clip.visual.conv1.weight[0, 0, 0, 0] = float("inf")

    monkeypatch.setattr(loop, "apply_update", poisoned)
    recipe = tiny_recipe(tmp_path, "clip", steps=4, checkpoint_every=1)
    with pytest.raises(UserError, match=r"diverged at step 3/4: clip\.visual\.conv1\.weight is not finite after the "
                                        r"update; the last good checkpoint \(step 2\)"):
        train(recipe, tmp_path / "out", evaluate=False, progress=False)
    state = kept_state(tmp_path / "out")
    assert state["run"]["step"] == 2 and all_finite(state["student"].values())
    assert not (tmp_path / "out").exists()


def test_a_run_that_diverges_before_any_checkpoint_leaves_no_work_folder(tmp_path, monkeypatch):
    from silc_eval.train import objectives

    monkeypatch.setattr(objectives.ContrastiveObjective, "losses",
                        lambda self, outputs, batch, step: {"loss": outputs["logit_scale"] * float("inf")})
    with pytest.raises(UserError, match=r"diverged at step 1/2: the loss is inf; no checkpoint was written yet; .*"
                                        r"which starts again"):
        train(tiny_recipe(tmp_path, "clip", steps=2), tmp_path / "out", evaluate=False, progress=False)
    assert not work_folder(tmp_path / "out").exists() and not (tmp_path / "out").exists()


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    from silc_eval.train import state as state_module

    folder = tmp_path / "train_state"
    state_module.save_state(folder, {"recipe_hash": "old", "student": {}, "optimizer": {}, "objective": {}, "run": {}})

    def half_written(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    for failure in (enospc, half_written):
        monkeypatch.setattr(state_module.torch, "save", failure)
        with pytest.raises(UserError, match=r"^cannot write .*train_state/last\.pt: .* \(disk full\?\)$") as caught:
            state_module.save_state(folder, {"recipe_hash": "new"})
        assert "\n" not in str(caught.value) and "inline_container" not in str(caught.value)
        assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]
        monkeypatch.undo()
        assert torch.load(folder / "last.pt", weights_only=True)["recipe_hash"] == "old"  # the old state is intact


def test_a_full_disk_during_training_stops_with_one_line(tmp_path, monkeypatch):
    from silc_eval.train import state as state_module

    monkeypatch.setattr(state_module.torch, "save", enospc)
    recipe = tiny_recipe(tmp_path, "clip", steps=3, checkpoint_every=1)
    with pytest.raises(UserError, match=r"cannot write .*next\.pt: No space left on device \(disk full\?\)"):
        train(recipe, tmp_path / "out", evaluate=False, progress=False)
    assert not work_folder(tmp_path / "out").exists() and not (tmp_path / "out").exists()


def test_a_full_disk_during_export_leaves_no_half_written_model(tmp_path, monkeypatch):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", enospc)
    with pytest.raises(UserError, match=r"cannot write .*out: No space left on device \(disk full\?\)"):
        train(tiny_recipe(tmp_path, "clip", steps=1), tmp_path / "out", evaluate=False, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".yaml")) == []


def test_resume_refuses_a_different_recipe_but_takes_a_new_learning_rate(tmp_path):
    recipe = tiny_recipe(tmp_path, "clip", steps=4)
    train(recipe, tmp_path / "out", evaluate=False, progress=False, stop_after_steps=1)
    recipe["optim"]["weight_decay"] = 0.05
    with pytest.raises(UserError, match="different recipe"):
        train(recipe, tmp_path / "out", evaluate=False, progress=False)
    recipe["optim"]["weight_decay"] = 0.1
    recipe["optim"]["lr"] = 5e-4  # only the learning rate changes: the run resumes, and the card says so
    card = train(recipe, tmp_path / "out", evaluate=False, progress=False)
    assert card["training"]["steps"] == 4
    assert card["training"]["schedule_changes"] == [{"step": 1, "from": {"lr": 1e-3, "warmup_steps": 1},
                                                     "to": {"lr": 5e-4, "warmup_steps": 1}}]
    recipe["optim"]["weight_decay"] = 0.05
    assert train(recipe, tmp_path / "restarted", evaluate=False, progress=False, stop_after_steps=1) is None
    assert train(recipe, tmp_path / "restarted", evaluate=False, progress=False, restart=True) is not None


def test_a_state_written_before_the_learning_rate_could_change_still_resumes(tmp_path):
    from silc_eval.train.state import legacy_recipe_hash

    recipe = tiny_recipe(tmp_path, "clip", steps=3)
    train(recipe, tmp_path / "out", evaluate=False, progress=False, stop_after_steps=1)
    path = work_folder(tmp_path / "out") / "train_state" / "last.pt"
    state = torch.load(path, weights_only=True)
    state["recipe_hash"] = legacy_recipe_hash(recipe)
    torch.save(state, path)
    assert train(recipe, tmp_path / "out", evaluate=False, progress=False)["training"]["steps"] == 3


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


def test_every_shipped_recipe_loads_and_overrides_are_checked(tmp_path):
    from silc_eval.train.recipe import available_recipes

    for name in available_recipes():
        assert load_recipe(name)["optim"]["lr"] > 0
    assert load_recipe("clip", {"steps": 3, "batch_size": 4, "n_train": 64, "epochs": None})["optim"]["steps"] == 3
    for key, value in (("steps", 0), ("steps", -1), ("batch_size", 0), ("epochs", 0), ("n_train", 0)):
        with pytest.raises(UserError, match=f"^--{key.replace('_', '-')} {value}: expected an integer >= 1$"):
            load_recipe("clip", {key: value})


def test_a_failed_run_leaves_no_work_folder_it_created(tmp_path):
    recipe = tiny_recipe(tmp_path, "clip", steps=2)
    recipe["data"].update(source="csv", csv=str(tmp_path / "pairs.csv"))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "0.png").write_bytes(b"not a png")
    (tmp_path / "pairs.csv").write_text("filepath,caption\n" + "img/0.png,a red circle\n" * 8)
    with pytest.raises(UserError, match=r"no sample of the training data could be read \(1 unreadable, e\.g\. "
                                        r"img/0\.png: undecodable image"):
        train(recipe, tmp_path / "out", evaluate=False, progress=False)
    assert not work_folder(tmp_path / "out").exists() and not (tmp_path / "out").exists()
