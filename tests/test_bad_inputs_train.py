"""A battery of bad inputs for `silc-eval train`: recipes, command-line overrides, data, saved state, output.

Each case is a user's mistake. The contract (tests/conftest.py assert_fails_cleanly): exit code 2,
exactly one stderr line 'silc-eval: error: ...' matching the case's pattern, no traceback, and
nothing created or removed under the watched folders (this test's folder, where the recipe, the
data, the output and its work folder live, and the session's cache). Every case fails before
training starts; the divergence test at the end trains a tiny model for a few steps.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import assert_fails_cleanly

TINY_MODEL = {"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
              "text": {"context_length": 32, "width": 32, "heads": 2, "layers": 1}}
N_IMAGES = 16


def write_pairs(folder: Path, n: int = N_IMAGES, missing: bool = False) -> Path:
    """Write n small PNGs (none when missing) and folder/pairs.csv naming them; returns the CSV."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    colours, shapes = ["red", "green", "blue"], ["circle", "square", "star"]
    rows = ["filepath,caption"]
    for i in range(n):
        if not missing:
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,a {colours[i % 3]} {shapes[(i // 3) % 3]}")
    csv = folder / "pairs.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def base_recipe(tmp: Path) -> dict:
    """A valid tiny recipe over tmp/pairs.csv (no SynthScenes, no evaluation)."""
    return {"name": "tiny", "objective": "clip", "seed": 3, "model": copy.deepcopy(TINY_MODEL), "eval_suite": None,
            "data": {"source": "csv", "csv": str(tmp / "pairs.csv")},
            "optim": {"batch_size": 8, "steps": 4, "warmup_steps": 1, "log_every": 1000, "checkpoint_every": 1,
                      "lr": 1e-3}}


def write_recipe(tmp: Path, recipe: dict | str, name: str = "recipe.yaml") -> Path:
    path = tmp / name
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    return path


def train_argv(tmp: Path, recipe: Path | str, *extra: str) -> list[str]:
    return ["train", "--recipe", str(recipe), "--output", str(tmp / "out"), "--no-eval", *extra]


def with_value(section: str | None, key: str, value) -> Callable[[Path], list[str]]:
    """A case: the base recipe with one value replaced (section None: a top-level key)."""
    def setup(tmp: Path) -> list[str]:
        recipe = base_recipe(tmp)
        if section is None:
            recipe[key] = value
        else:
            node = recipe
            for part in section.split("."):
                node = node[part]
            node[key] = value
        return train_argv(tmp, write_recipe(tmp, recipe))
    return setup


def with_data(**data) -> Callable[[Path], list[str]]:
    """A case: the base recipe with its data section replaced."""
    def setup(tmp: Path) -> list[str]:
        recipe = base_recipe(tmp)
        recipe["data"] = data
        return train_argv(tmp, write_recipe(tmp, recipe))
    return setup


def with_args(*extra: str) -> Callable[[Path], list[str]]:
    """A case: the valid base recipe with command-line arguments added."""
    return lambda tmp: train_argv(tmp, write_recipe(tmp, base_recipe(tmp)), *extra)


def with_text(text: str) -> Callable[[Path], list[str]]:
    """A case: a recipe file with this text."""
    return lambda tmp: train_argv(tmp, write_recipe(tmp, text))


def with_csv(text: str | None, images: bool = True) -> Callable[[Path], list[str]]:
    """A case: the base recipe over a CSV with this text (None: no CSV file at all)."""
    def setup(tmp: Path) -> list[str]:
        (tmp / "pairs.csv").unlink()
        if text is not None:
            (tmp / "pairs.csv").write_text(text)
        return train_argv(tmp, write_recipe(tmp, base_recipe(tmp)))
    return setup


def all_images_missing(tmp: Path) -> list[str]:
    for image in (tmp / "img").iterdir():
        image.unlink()
    return train_argv(tmp, write_recipe(tmp, base_recipe(tmp)))


class RunsCode:
    """Pickles into a call of os.system: torch.load(weights_only=False) of it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def state_file(tmp: Path) -> Path:
    path = tmp / ".out.training" / "train_state" / "last.pt"
    path.parent.mkdir(parents=True)
    return path


def crafted_state(tmp: Path) -> list[str]:
    torch.save({"recipe_hash": RunsCode(tmp / "pwned"), "student": {}, "optimizer": {}, "objective": {}, "run": {}},
               state_file(tmp))
    return train_argv(tmp, write_recipe(tmp, base_recipe(tmp)))


def garbage_state(tmp: Path) -> list[str]:
    state_file(tmp).write_bytes(b"PK\x03\x04 half a zip archive")
    return train_argv(tmp, write_recipe(tmp, base_recipe(tmp)))


def foreign_state(tmp: Path) -> list[str]:
    torch.save({"weights": torch.zeros(3)}, state_file(tmp))
    return train_argv(tmp, write_recipe(tmp, base_recipe(tmp)))


def state_of(tmp: Path, recipe_path: Path, student: dict) -> None:
    from silc_eval.train.recipe import load_recipe
    from silc_eval.train.state import recipe_hash

    torch.save({"recipe_hash": recipe_hash(load_recipe(str(recipe_path))), "student": student, "optimizer": {},
                "objective": {}, "run": {"step": 2}}, state_file(tmp))


def other_recipe_state(tmp: Path) -> list[str]:
    other = base_recipe(tmp)
    other["optim"]["weight_decay"] = 0.5
    state_of(tmp, write_recipe(tmp, other, "other.yaml"), {"w": torch.zeros(2)})
    return train_argv(tmp, write_recipe(tmp, base_recipe(tmp)))


def nan_state(tmp: Path) -> list[str]:
    recipe = write_recipe(tmp, base_recipe(tmp))
    state_of(tmp, recipe, {"clip.visual.conv1.weight": torch.tensor([1.0, float("nan")])})
    return train_argv(tmp, recipe)


def output_is_a_file(tmp: Path) -> list[str]:
    (tmp / "out").write_text("not a folder\n")
    return train_argv(tmp, write_recipe(tmp, base_recipe(tmp)))


def output_is_someone_elses_folder(tmp: Path) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / "thesis.tex").write_text("\\documentclass{article}\n")
    return train_argv(tmp, write_recipe(tmp, base_recipe(tmp)))


SYNTH = {"source": "synthscenes", "n_train": 64}
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    # optim values: wrong type, out of range, not a number at all
    ("lr-word", with_value("optim", "lr", "fast"), r"recipe\.yaml: parameter optim\.lr is 'fast'; expected a finite "
                                                   r"number > 0"),
    ("lr-negative", with_value("optim", "lr", -0.1), r"parameter optim\.lr is -0\.1; expected a finite number > 0"),
    ("lr-zero", with_value("optim", "lr", 0), r"parameter optim\.lr is 0;"),
    ("lr-infinite", with_value("optim", "lr", float("inf")), r"parameter optim\.lr is inf; expected a finite"),
    ("lr-nan", with_value("optim", "lr", float("nan")), r"parameter optim\.lr is nan;"),
    ("batch-size-zero", with_value("optim", "batch_size", 0), r"parameter optim\.batch_size is 0; expected an "
                                                              r"integer >= 1"),
    ("batch-size-float", with_value("optim", "batch_size", 2.5), r"parameter optim\.batch_size is 2\.5; expected an "
                                                                 r"integer"),
    ("steps-zero", with_value("optim", "steps", 0), r"parameter optim\.steps is 0; expected an integer >= 1 or null"),
    ("steps-bool", with_value("optim", "steps", True), r"parameter optim\.steps is True; expected an integer"),
    ("epochs-negative", with_value("optim", "epochs", -1), r"parameter optim\.epochs is -1"),
    ("warmup-negative", with_value("optim", "warmup_steps", -3), r"parameter optim\.warmup_steps is -3"),
    ("grad-clip-word", with_value("optim", "grad_clip", "off"), r"parameter optim\.grad_clip is 'off'; expected a "
                                                               r"finite number >= 0 or null"),
    ("betas-short", with_value("optim", "betas", [0.9]), r"parameter optim\.betas is \[0\.9\]; expected a list of two"),
    ("betas-above-one", with_value("optim", "betas", [0.9, 1.5]), r"parameter optim\.betas is \[0\.9, 1\.5\]"),
    ("eps-zero", with_value("optim", "eps", 0.0), r"parameter optim\.eps is 0\.0; expected a finite number > 0"),
    ("log-every-zero", with_value("optim", "log_every", 0), r"parameter optim\.log_every is 0"),
    ("checkpoint-every-list", with_value("optim", "checkpoint_every", [1]), r"parameter optim\.checkpoint_every is "
                                                                           r"\[1\]"),
    ("optim-unknown-key", with_value("optim", "learning_rate", 0.1), r"unknown key 'learning_rate' in optim"),
    ("optim-not-a-mapping", with_value(None, "optim", 5), r"recipe\.yaml: 'optim' must be a mapping"),
    # data values
    ("source-unknown", with_data(source="parquet", csv="x.csv"), r"parameter data\.source is 'parquet'; expected one "
                                                                 r"of synthscenes, webdataset, csv"),
    ("n-train-negative", with_data(source="synthscenes", n_train=-5), r"parameter data\.n_train is -5"),
    ("shuffle-buffer-word", with_data(**SYNTH, shuffle_buffer="big"), r"parameter data\.shuffle_buffer is 'big'"),
    ("csv-column-empty", with_value("data", "csv_image_column", ""), r"parameter data\.csv_image_column is ''"),
    ("csv-not-set", with_data(source="csv"), r"data\.source is csv but data\.csv .* is not set"),
    ("shards-not-set", with_data(source="webdataset"), r"data\.source is webdataset but data\.shards .* is not set"),
    ("batch-larger-than-data", with_data(source="synthscenes", n_train=4), r"optim\.batch_size 8 is larger than "
                                                                           r"data\.n_train 4"),
    ("data-not-a-mapping", with_value(None, "data", ["csv"]), r"'data' must be a mapping"),
    # the rest of a recipe
    ("seed-negative", with_value(None, "seed", -1), r"parameter seed is -1; expected an integer >= 0"),
    ("name-with-a-slash", with_value(None, "name", "../escape"), r"parameter name is '\.\./escape'"),
    ("eval-suite-unknown", with_value(None, "eval_suite", "nope"), r"eval_suite: unknown suite 'nope'"),
    ("model-not-a-mapping", with_value(None, "model", []), r"'model' must be a mapping"),
    ("model-size-zero", with_value("model.vision", "image_size", 0), r"parameter model\.vision\.image_size is 0"),
    ("model-size-word", with_value("model", "embed_dim", "wide"), r"parameter model\.embed_dim is 'wide'"),
    ("model-unknown-key", with_value("model.vision", "pach_size", 8), r"unknown key 'pach_size' in model\.vision"),
    ("model-wrong-type", with_value("model.text", "mlp_ratio", "four"), r"parameter model\.text\.mlp_ratio is 'four'"),
    ("objective-unknown", with_value(None, "objective", "clap"), r"unknown objective 'clap'; expected one of clip"),
    ("objective-bad-option", with_value(None, "objective", {"name": "silc", "distill": {"bogus": 1}}),
     r"unknown distill parameter 'bogus'"),
    ("recipe-unknown-key", with_value(None, "colour", "red"), r"unknown key 'colour' in recipe"),
    # recipe files
    ("recipe-unknown", lambda tmp: train_argv(tmp, "no-such-recipe"), r"unknown recipe 'no-such-recipe'; expected a "
                                                                      r"YAML file or one of .*clip"),
    ("recipe-malformed-yaml", with_text("name: tiny\noptim: {lr: [1,\n"), r"recipe\.yaml: not valid YAML"),
    ("recipe-not-a-mapping", with_text("- clip\n- siglip\n"), r"recipe\.yaml: expected a YAML mapping"),
    ("recipe-missing-section", with_text("name: tiny\nobjective: clip\nmodel: {}\ndata: {}\n"),
     r"missing field 'optim'"),
    # command-line overrides
    ("cli-steps-zero", with_args("--steps", "0"), r"--steps 0: expected an integer >= 1$"),
    ("cli-steps-negative", with_args("--steps", "-1"), r"--steps -1: expected an integer >= 1$"),
    ("cli-batch-size-zero", with_args("--batch-size", "0"), r"--batch-size 0: expected an integer >= 1$"),
    ("cli-epochs-zero", with_args("--epochs", "0"), r"--epochs 0: expected an integer >= 1$"),
    ("cli-steps-word", with_args("--steps", "many"), r"argument --steps: invalid int value: 'many'"),
    ("cli-n-train-for-csv", with_args("--n-train", "100"), r"--n-train sets the number of SynthScenes pairs, but .* "
                                                           r"reads csv data"),
    ("cli-batch-larger-than-data", with_args("--batch-size", "32"), r"holds 16 pairs, fewer than one batch of 32"),
    ("cli-unknown-device", with_args("--device", "tpu"), r"unknown device 'tpu'; expected cpu or cuda"),
    # data files
    ("csv-missing", with_csv(None), r"caption CSV not found: expected .*pairs\.csv"),
    ("csv-empty", with_csv(""), r"pairs\.csv is empty"),
    ("csv-no-column", with_csv("path,text\nimg/0.png,a red circle\n"), r"pairs\.csv has no column 'filepath'"),
    ("csv-no-rows", with_csv("filepath,caption\n"), r"pairs\.csv has no rows"),
    ("csv-all-images-missing", all_images_missing, r"none of the 16 images of .*pairs\.csv exists \(e\.g\. "
                                                   r".*img/\d+\.png\)"),
    # saved state and output
    ("state-runs-code", crafted_state, r"last\.pt is not a training state that loads safely .*--restart"),
    ("state-garbage", garbage_state, r"last\.pt is not a training state that loads safely .*--restart"),
    ("state-foreign", foreign_state, r"last\.pt is not a silc-eval training state .*--restart"),
    ("state-other-recipe", other_recipe_state, r"holds a run of a different recipe .*--restart"),
    ("state-not-finite", nan_state, r"last\.pt holds non-finite weights \(clip\.visual\.conv1\.weight\); .*--restart"),
    ("output-is-a-file", output_is_a_file, r"output .*out is a file"),
    ("output-is-another-folder", output_is_someone_elses_folder, r"output .*out is a folder that holds no checkpoint"),
]


@pytest.mark.parametrize("setup, expected", [pytest.param(s, e, id=i) for i, s, e in CASES])
def test_bad_training_input_fails_cleanly(tmp_path, capsys, hermetic_cache, setup, expected):
    write_pairs(tmp_path)
    argv = setup(tmp_path)
    line = assert_fails_cleanly(capsys, argv, expected, watch=[tmp_path, hermetic_cache])
    assert "weights_only" not in line  # never torch's advice to load a file with its code
    assert not (tmp_path / "pwned").exists()  # the crafted state ran no code


def test_the_battery_is_large():
    assert len(CASES) >= 15 and len({i for i, _, _ in CASES}) == len(CASES)


def test_a_crafted_state_file_never_runs_its_code(tmp_path, capsys):
    """The marker file proves the payload works (torch.load without weights_only runs it), and that train does not."""
    write_pairs(tmp_path)
    argv = crafted_state(tmp_path)
    line = assert_fails_cleanly(capsys, argv, r"not a training state that loads safely", watch=[tmp_path])
    assert "weights_only" not in line
    assert not (tmp_path / "pwned").exists()
    torch.load(tmp_path / ".out.training" / "train_state" / "last.pt", weights_only=False)  # the unsafe load ...
    assert (tmp_path / "pwned").exists()  # ... runs the file's code: the payload is real


def test_a_diverging_run_stops_keeps_a_good_checkpoint_and_resumes_with_a_lower_lr(tmp_path, capsys):
    from silc_eval.cli import main

    write_pairs(tmp_path)
    recipe = base_recipe(tmp_path)
    recipe["optim"].update(lr=3000.0, warmup_steps=0, steps=8, checkpoint_every=1)
    path = write_recipe(tmp_path, recipe)
    argv = train_argv(tmp_path, path)
    line = assert_fails_cleanly(capsys, argv, r"training diverged at step \d+/8: (the loss is nan|.* is not finite)")
    assert "the last good checkpoint (step " in line and "lower optim.lr (now 3000)" in line
    assert "rerun the same command, which resumes from it" in line
    assert not (tmp_path / "out").exists()  # no exported model, no card
    state_dir = tmp_path / ".out.training" / "train_state"
    assert not (state_dir / "next.pt").exists() and not list(state_dir.glob(".*.tmp"))
    state = torch.load(state_dir / "last.pt", weights_only=True)
    kept = int(line.split("the last good checkpoint (step ")[1].split(")")[0])
    assert state["run"]["step"] == kept >= 1
    assert all(torch.isfinite(t).all() for t in state["student"].values() if t.is_floating_point())

    recipe["optim"]["lr"] = 1e-3  # only the learning rate changes: no --restart needed
    write_recipe(tmp_path, recipe)
    assert main(argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"resuming tiny from step {kept} with lr 0.001" in err and "Traceback" not in err
    card = yaml.safe_load((tmp_path / "out" / "card.yaml").read_text())
    assert card["training"]["steps"] == 8
    assert card["training"]["schedule_changes"] == [{"step": kept, "from": {"lr": 3000.0, "warmup_steps": 0},
                                                     "to": {"lr": 0.001, "warmup_steps": 0}}]
    weights = load_file(str(tmp_path / "out" / "open_clip_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (tmp_path / ".out.training").exists()
