"""The training loop: recipe -> open_clip model + objective -> local-dir checkpoint + model card."""

from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from silc_eval.errors import UserError
from silc_eval.io import atomic_directory
from silc_eval.offline import enforce_offline
from silc_eval.provenance import git_commit, package_versions
from silc_eval.train.model_config import WEIGHTS_FILE, create_model, open_clip_config, save_local_dir
from silc_eval.train.objectives import build_objective
from silc_eval.train.pairs import iterate_pairs, list_shards
from silc_eval.train.tokenizer import save_word_tokenizer

SYNTH_MEAN = (0.5, 0.5, 0.5)
SYNTH_STD = (0.5, 0.5, 0.5)


def log(message: str) -> None:
    """Print a training log line to stderr."""
    print(message, file=sys.stderr, flush=True)


def resolve_training_data(recipe: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Return (shard paths, data description for the card) for the recipe's data section."""
    data = recipe["data"]
    if data["source"] == "synthscenes":
        from silc_eval.data.synthscenes import SynthScenesConfig, ensure_synthscenes, part_fingerprint

        config = SynthScenesConfig(n_train=data["n_train"])
        root = ensure_synthscenes(None, parts=("train",), config=config)
        part = root / "synthscenes" / "train"
        return list_shards(part / "shards"), {"source": "synthscenes", "n_train": data["n_train"],
                                              "fingerprint": part_fingerprint(part)}
    if data["source"] == "webdataset":
        if not data["shards"]:
            raise UserError("recipe data.source is webdataset but data.shards (a folder of .tar shards) is not set")
        shards = list_shards(Path(data["shards"]))
        return shards, {"source": "webdataset", "shards": str(data["shards"]), "n_shards": len(shards)}
    raise UserError(f"unknown data.source '{data['source']}'; expected synthscenes or webdataset")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Return AdamW groups: decay on matrices, none on gains, biases, embeddings and logit scale/bias."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name \
            or "embedding" in name
        (no_decay if exclude else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def cosine_lr(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Return the learning rate at step: linear warmup to base_lr, then cosine decay to 0."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))


def count_steps(recipe: dict[str, Any], n_samples: int | None) -> int:
    """Return the number of optimiser steps: optim.steps, else epochs x full batches per epoch."""
    optim = recipe["optim"]
    if optim["steps"]:
        return int(optim["steps"])
    if not n_samples:
        raise UserError("the dataset size is unknown for webdataset shards: set optim.steps (or --steps)")
    return int(optim["epochs"]) * (n_samples // int(optim["batch_size"]))


def train(recipe: dict[str, Any], output: Path, device: str = "cpu", evaluate: bool = True,
          progress: bool = True) -> dict[str, Any]:
    """Train a recipe and write output/ (open_clip local-dir + card.yaml) atomically; returns the card."""
    enforce_offline()
    import open_clip

    from silc_eval.data.synthscenes import vocabulary

    output = Path(output)
    torch.manual_seed(recipe["seed"])
    shards, data_info = resolve_training_data(recipe)
    optim = recipe["optim"]
    with atomic_directory(output) as staging:
        vocab_size = save_word_tokenizer(vocabulary(), staging)
        config = open_clip_config(recipe["model"], vocab_size, SYNTH_MEAN, SYNTH_STD)
        model = create_model(config).to(device).train()
        model.output_dict = True
        save_local_dir(model, config, staging)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{staging}")
        image_size = recipe["model"]["vision"]["image_size"]
        transform = open_clip.image_transform(image_size, is_train=True, mean=SYNTH_MEAN, std=SYNTH_STD)
        objective = build_objective(recipe["objective"])
        optimizer = torch.optim.AdamW(param_groups(model, optim["weight_decay"]), lr=optim["lr"],
                                      betas=tuple(optim["betas"]), eps=optim["eps"])
        total_steps = count_steps(recipe, data_info.get("n_train"))
        step, epoch, started, seen = 0, 0, time.perf_counter(), 0
        window_loss, window_start = 0.0, time.perf_counter()
        while step < total_steps:
            for images, tokens in iterate_pairs(shards, transform, tokenizer, optim["batch_size"], recipe["seed"],
                                                epoch, recipe["data"]["shuffle_buffer"]):
                lr = cosine_lr(step, total_steps, optim["lr"], optim["warmup_steps"])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                outputs = model(images.to(device), tokens.to(device))
                losses = objective(outputs)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    raise UserError(f"training diverged at step {step}: loss is {loss.item()}; lower optim.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if optim["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), optim["grad_clip"])
                optimizer.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
                step += 1
                seen += images.shape[0]
                window_loss += loss.item()
                if progress and (step % optim["log_every"] == 0 or step == total_steps):
                    elapsed = time.perf_counter() - window_start
                    n = optim["log_every"] if step % optim["log_every"] == 0 else step % optim["log_every"]
                    log(f"step {step:>6d}/{total_steps} epoch {epoch} loss {window_loss / n:.4f} lr {lr:.2e} "
                        f"{n * optim['batch_size'] / elapsed:.0f} img/s")
                    window_loss, window_start = 0.0, time.perf_counter()
                if step >= total_steps:
                    break
            epoch += 1
        wall_time = time.perf_counter() - started
        weights = save_local_dir(model.eval(), config, staging)
        card = make_card(output.name, recipe, config, model, weights, data_info, step, seen, epoch, wall_time, device)
        (staging / "card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    if evaluate:
        card = add_reference_scores(output, recipe.get("eval_suite", "quick"), device, progress)
    return card


def make_card(name: str, recipe, config, model, weights: Path, data_info, steps, seen, epochs, wall_time,
              device) -> dict:
    """Return the model card of a finished training run (reference scores are added after evaluation)."""
    from silc_eval.data.fingerprint import file_sha256

    return {
        "name": name,
        "description": recipe.get("description", ""),
        "format": "open_clip local-dir (open_clip_config.json + open_clip_model.safetensors + tokenizer)",
        "architecture": config["model_cfg"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights": {"file": WEIGHTS_FILE, "sha256": file_sha256(weights)},
        "training": {
            "recipe": recipe["name"], "objective": recipe["objective"], "seed": recipe["seed"],
            "optim": recipe["optim"], "data": data_info, "steps": steps, "epochs_started": epochs,
            "images_seen": seen, "views_per_image": 1, "wall_time_s": round(wall_time, 1),
            "device": device, "machine": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
        "provenance": {"git_commit": git_commit(), "packages": package_versions()},
    }


def add_reference_scores(folder: Path, suite: str, device: str, progress: bool) -> dict:
    """Evaluate a trained local-dir on a suite and store the scores in its card; returns the card."""
    import tempfile

    from silc_eval.registry import resolve_suite
    from silc_eval.runner import RunConfig, run

    card_path = Path(folder) / "card.yaml"
    card = yaml.safe_load(card_path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        records = run(RunConfig(benchmarks=resolve_suite(suite), models=[f"local-dir:{folder}"], output=Path(tmp),
                                device=device, progress=progress))
    card["reference_suite"] = suite
    card["reference_scores"] = {r["benchmark"]["name"]: {k: round(float(v), 6) for k, v in r["metrics"].items()}
                                for r in records}
    from silc_eval.io import atomic_write_text

    atomic_write_text(card_path, yaml.safe_dump(card, sort_keys=False))
    return card
