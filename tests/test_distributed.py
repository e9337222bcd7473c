"""Two CPU processes on gloo (torchrun) reproduce a one-process run with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from silc_eval.train.model_config import create_model

TINY_MODEL = {"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
              "text": {"context_length": 32, "width": 32, "heads": 2, "layers": 1}}
OBJECTIVES = {
    "clip": "clip",
    "siglip": "siglip",
    "silc": {"name": "silc", "views": {"n_local": 2, "local_size": 16},
             "distill": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}},
}


def write_recipe(tmp_path, name):
    recipe = {"name": f"ddp-{name}", "objective": OBJECTIVES[name], "seed": 5, "model": TINY_MODEL,
              "data": {"source": "synthscenes", "n_train": 96, "shuffle_buffer": 16},
              "optim": {"batch_size": 16, "steps": 4, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 0}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_training(recipe, output, processes):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "silc_eval.train"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "silc_eval.train"]
    command += ["--recipe", str(recipe), "--output", str(output), "--no-eval", "--device", "cpu"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return yaml.safe_load((output / "card.yaml").read_text())


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_two_gloo_processes_match_one_process(tmp_path, objective, hermetic_cache):
    recipe = write_recipe(tmp_path, objective)
    single = run_training(recipe, tmp_path / "one", 1)
    double = run_training(recipe, tmp_path / "two", 2)
    assert double["compute"]["processes"] == 2 and single["compute"]["processes"] == 1
    assert double["compute"]["images_seen"] == single["compute"]["images_seen"] == 4 * 16
    a, b = load_file(str(tmp_path / "one" / "open_clip_model.safetensors")), \
        load_file(str(tmp_path / "two" / "open_clip_model.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    if objective == "clip":
        # With features gathered across ranks, rank 0's loss is the loss of the whole global batch
        # (SigLIP's rank loss covers its own images only, SILC's distillation its own slice).
        one = [loss for _, loss in single["loss_history"]]
        two = [loss for _, loss in double["loss_history"]]
        assert two == pytest.approx(one, rel=1e-4)
    # Both runs trained: the weights moved away from the seeded initialisation.
    config = json.loads((tmp_path / "one" / "open_clip_config.json").read_text())
    torch.manual_seed(5)
    initial = create_model(config).state_dict()
    assert not torch.allclose(initial["visual.conv1.weight"], b["visual.conv1.weight"])
