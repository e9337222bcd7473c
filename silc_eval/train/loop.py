"""The training loop: recipe -> student + objective -> resumable steps -> local-dir checkpoint + model card.

One loop serves every objective and any number of processes (torchrun). During training
the run lives in a hidden work folder beside the output (`.NAME.training/`: tokenizer,
config, `train_state/last.pt`); a rerun with the same recipe resumes from it and gives
the same model as an uninterrupted run. The output folder appears, atomically, only when
training has finished.

A user's mistake is found before anything is written (the recipe is checked when it is
loaded, the saved state and the data here); a run that fails leaves no work folder it
created, unless the folder holds a checkpoint to resume from. Every step checks the loss
and the gradients before the optimiser step and the weights after it, so every checkpoint
and every exported model is finite, and a periodic checkpoint becomes the one to resume
from (`last.pt`) only after the next step has shown its weights give a finite loss and
finite gradients. A diverged run stops with one line that says how to resume from its last
good checkpoint with a lower learning rate (optim.lr and optim.warmup_steps may change on
resume; the card records the change).
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from silc_eval.core.distributed import DistEnv, all_ranks_true, barrier, init_distributed, shutdown_env
from silc_eval.core.errors import Stopped, UserError
from silc_eval.core.io import atomic_directory, atomic_write_text
from silc_eval.core.log import log, warn
from silc_eval.core.offline import enforce_offline
from silc_eval.core.provenance import git_commit, package_versions
from silc_eval.evaluate.api import build_splits, dataset_root, evaluate_benchmark
from silc_eval.models import load_model
from silc_eval.models.loading import local_dir_spec
from silc_eval.models.open_clip_model import OpenClipModel
from silc_eval.models.zoo import CARD_FILE, read_card
from silc_eval.registry import resolve_suite
from silc_eval.train.augment import MultiViewTransform
from silc_eval.train.factory import build_objective
from silc_eval.train.model_config import CONFIG_FILE, WEIGHTS_FILE, create_model, open_clip_config, save_local_dir
from silc_eval.train.objectives import StudentModule
from silc_eval.train.pairs import PairSource, ReadStats, csv_source, iterate_batches, list_shards
from silc_eval.train.state import (
    PENDING_FILE,
    STATE_FILE,
    discard_pending,
    first_nonfinite,
    legacy_recipe_hash,
    load_state,
    promote_pending,
    recipe_hash,
    save_state,
    trained_weights_hash,
    write_error,
)
from silc_eval.train.tokenizer import save_word_tokenizer

SYNTH_MEAN = (0.5, 0.5, 0.5)
SYNTH_STD = (0.5, 0.5, 0.5)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def work_folder(output: Path) -> Path:
    """Return the hidden folder where an unfinished run of output keeps its state."""
    return output.parent / f".{output.name}.training"


def resolve_training_data(recipe: dict[str, Any]) -> tuple[PairSource, dict[str, Any]]:
    """Return (pair source, data description for the card) for the recipe's data section."""
    data = recipe["data"]
    if data["source"] == "synthscenes":
        from silc_eval.producers.synthscenes import SynthScenesConfig, ensure_synthscenes, part_fingerprint

        root = ensure_synthscenes(None, parts=("train",), config=SynthScenesConfig(n_train=data["n_train"]))
        part = root / "synthscenes" / "train"
        source = PairSource("webdataset", shards=list_shards(part / "shards"), size=data["n_train"])
        return source, {"source": "synthscenes", "n_train": data["n_train"], "fingerprint": part_fingerprint(part)}
    if data["source"] == "webdataset":
        if not data["shards"]:
            raise UserError("recipe data.source is webdataset but data.shards (a folder of .tar shards) is not set")
        shards = list_shards(Path(data["shards"]))
        return PairSource("webdataset", shards=shards), {"source": "webdataset", "shards": str(data["shards"]),
                                                         "n_shards": len(shards)}
    if data["source"] == "csv":
        if not data["csv"]:
            raise UserError("recipe data.source is csv but data.csv (a CSV with filepath,caption) is not set")
        source = csv_source(Path(data["csv"]), data["csv_image_column"], data["csv_caption_column"])
        return source, {"source": "csv", "csv": str(data["csv"]), "n_rows": source.size}
    raise UserError(f"unknown data.source '{data['source']}'; expected synthscenes, webdataset or csv")


def on_main(env: DistEnv, fn):
    """Run fn on rank 0 only; every rank raises if it failed there with a UserError; returns fn's result (None on
    the other ranks)."""
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except UserError as exc:
            error = exc
    if not all_ranks_true(env, error is None):
        raise error or UserError("rank 0 failed (its message says why)")
    return result


def check_output(output: Path) -> None:
    """Refuse an output that is a file, or a folder of something else than an earlier checkpoint (which a finished
    run replaces)."""
    if output.exists() and not output.is_dir():
        raise UserError(f"output {output} is a file; expected a folder to write the checkpoint into")
    if output.is_dir() and any(output.iterdir()) and not (output / CARD_FILE).is_file() \
            and not (output / CONFIG_FILE).is_file():
        raise UserError(f"output {output} is a folder that holds no checkpoint, and a finished run would replace it; "
                        f"choose another --output")


def named_tensors(tree: Any, prefix: str = ""):
    """Yield (dotted name, tensor) for every tensor of nested dicts/lists (state dicts)."""
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from named_tensors(value, f"{prefix}.{index}" if prefix else str(index))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Return AdamW groups: decay on matrices, none on gains, biases, embeddings, logit scale/bias, prototypes."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or any(k in name for k in ("bn", "ln", "bias", "logit_scale", "embedding",
                                                             "prototypes", "mask_token"))
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
    if n_samples and n_samples < optim["batch_size"]:
        raise UserError(f"the training data holds {n_samples} pairs, fewer than one batch of {optim['batch_size']}; "
                        f"lower optim.batch_size (--batch-size) or add data")
    if optim["steps"] is not None:
        return int(optim["steps"])
    if not n_samples:
        raise UserError("the dataset size is unknown for webdataset shards: set optim.steps (or --steps)")
    return int(optim["epochs"]) * (n_samples // int(optim["batch_size"]))


def prepare_work_folder(recipe: dict[str, Any], work: Path, env: DistEnv) -> dict[str, Any]:
    """Write tokenizer and config into the work folder (rank 0) and return the open_clip config."""
    from silc_eval.producers.synthscenes import vocabulary

    def write() -> None:
        try:
            work.mkdir(parents=True, exist_ok=True)
            vocab_size = save_word_tokenizer(vocabulary(), work)
            config = open_clip_config(recipe["model"], vocab_size, SYNTH_MEAN, SYNTH_STD)
            atomic_write_text(work / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise write_error(Path(exc.filename or work), exc) from None

    on_main(env, write)
    return json.loads((work / CONFIG_FILE).read_text())


def build_student(recipe: dict[str, Any], config: dict[str, Any], objective, env: DistEnv,
                  tokenizer) -> StudentModule:
    """Return the seeded student (open_clip model + the objective's heads) on env.device, teachers attached."""
    torch.manual_seed(recipe["seed"])
    clip = create_model(config)
    student = StudentModule(clip, objective.extras(clip)).to(env.device).train()
    if not objective.uses_text:
        for name, param in clip.named_parameters():
            if not name.startswith("visual."):
                param.requires_grad_(False)
    objective.attach(student, tokenizer)
    return student


class Evaluator:
    """Evaluation of the live student on a suite, through the public evaluate function of `silc-eval run`."""

    def __init__(self, suite: str, tokenizer, image_size: int):
        import open_clip

        self.benchmarks = resolve_suite(suite)
        self.tokenizer = tokenizer
        self.preprocess = open_clip.image_transform(image_size, is_train=False, mean=SYNTH_MEAN, std=SYNTH_STD)
        self.splits = [build_splits(b, dataset_root(b.dataset, None, None), self.preprocess) for b in self.benchmarks]

    def __call__(self, clip: torch.nn.Module) -> dict[str, float]:
        """Return {benchmark: main metric} for the model as it is now (left in train mode afterwards)."""
        was_training = clip.training
        model = OpenClipModel(clip, self.tokenizer, self.preprocess, "training", "-", "-", "training")
        scores = {}
        for benchmark, splits in zip(self.benchmarks, self.splits):
            metrics = evaluate_benchmark(model, benchmark, splits).outcome.metrics
            scores[benchmark.name] = round(float(metrics[benchmark.main_metric]), 6)
        clip.train(was_training)
        return scores


def apply_update(student: StudentModule, optimizer, objective, grad_clip: float) -> None:
    """After backward: clip gradients, step the optimiser, clamp the logit scale as open_clip does, update teachers."""
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    optimizer.step()
    with torch.no_grad():
        student.clip.logit_scale.clamp_(0, math.log(100))
    objective.after_step(student)


def measure_step_flops(fn) -> tuple[Any, int]:
    """Run fn() under torch's FLOP counter; returns (fn's result, FLOPs counted, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        result = fn()
    return result, int(counter.get_total_flops())


def train(recipe: dict[str, Any], output: Path, device: str = "cpu", evaluate: bool = True,
          progress: bool = True, restart: bool = False, keep_state: bool = False,
          stop_after_steps: int | None = None, amp: bool = False) -> dict[str, Any] | None:
    """Train a recipe into output/ (open_clip local-dir + card.yaml); returns the card (None if stopped early).

    stop_after_steps saves the state and returns after that many steps, as an interruption would. SIGTERM or
    SIGINT (Ctrl-C) does the same at the end of the step under way (the second one stops at once): the
    rerun resumes from that step.
    """
    enforce_offline()
    env = init_distributed(device)
    output = Path(output)
    work = work_folder(output)
    fresh = {"work": not work.exists()}  # set when this run creates the work folder (or discards it: --restart)
    try:
        with stop_requests() as requested:
            return _train(recipe, output, env, evaluate, progress, restart, keep_state, stop_after_steps, amp,
                          fresh, requested)
    except BaseException:
        # A failed run leaves no work folder it created, unless the folder holds a checkpoint to resume from.
        if env.is_main and fresh["work"] and work.exists() and not (work / "train_state" / STATE_FILE).exists():
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        shutdown_env(env)


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Yield a list that SIGTERM and SIGINT append their signal number to instead of stopping the process
    (a second one raises KeyboardInterrupt); the handlers before are restored after the block. Outside the
    main thread, where Python cannot install handlers, nothing is caught."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(number, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(number)
        warn(f"{signal.Signals(number).name}: stopping after the step under way and saving the state to resume "
             f"from (send it again to stop at once)")

    before = {number: signal.signal(number, handler) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requested
    finally:
        for number, previous in before.items():
            signal.signal(number, previous)


def _train(recipe, output: Path, env: DistEnv, evaluate, progress, restart, keep_state, stop_after_steps, amp,
           fresh: dict[str, bool], requested: list[int] = ()):
    import open_clip

    optim = recipe["optim"]
    work = work_folder(output)
    state_dir = work / "train_state"
    check_output(output)
    fingerprint = recipe_hash(recipe)
    saved = None if restart else load_state(state_dir)  # weights_only: a crafted file runs no code
    if saved is not None:
        if saved["recipe_hash"] not in (fingerprint, legacy_recipe_hash(recipe)):
            raise UserError(f"{work} holds a run of a different recipe (only optim.lr and optim.warmup_steps may "
                            f"change on resume); rerun with --restart to discard it")
        bad = first_nonfinite(named_tensors(saved["student"]))
        if bad is not None:
            raise UserError(f"{state_dir / STATE_FILE} holds non-finite weights ({bad}); "
                            f"rerun with --restart to discard it")
    source, data_info = resolve_training_data(recipe)
    total_steps = count_steps(recipe, data_info.get("n_train") or source.size)
    if restart and work.exists():
        if env.is_main:
            shutil.rmtree(work)
        fresh["work"] = True
    barrier(env)
    config = prepare_work_folder(recipe, work, env)
    tokenizer = open_clip.get_tokenizer(local_dir_spec(work))
    image_size = recipe["model"]["vision"]["image_size"]
    objective = build_objective(recipe["objective"], image_size, env.rank, env.world_size, optim["batch_size"])
    student = build_student(recipe, config, objective, env, tokenizer)
    optimizer = torch.optim.AdamW(param_groups(student, optim["weight_decay"]), lr=optim["lr"],
                                  betas=tuple(optim["betas"]), eps=optim["eps"])
    use_amp = amp and env.device.startswith("cuda")
    ddp = student
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(student, device_ids=[env.local_rank] if env.device.startswith("cuda") else None)
    transform = MultiViewTransform(objective.views, SYNTH_MEAN, SYNTH_STD)
    evaluator = Evaluator(recipe["eval_suite"], tokenizer, image_size) \
        if env.is_main and optim["eval_every"] and recipe["eval_suite"] else None

    schedule = {"lr": optim["lr"], "warmup_steps": optim["warmup_steps"]}
    run = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "images_seen": 0, "elapsed_s": 0.0, "flops_per_step": None,
           "eval_history": [], "loss_history": [], "read": 0, "skipped": 0, "skipped_examples": [],
           "skipped_keys": [], "schedule": schedule, "schedule_changes": [], "diagnostics": [], "warnings": []}
    last_good = None  # the step of last.pt, the checkpoint to resume from
    pending = None  # the step of next.pt, a checkpoint whose weights the next step has yet to prove
    if saved is not None:
        student.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])
        objective.load_state_dict(saved["objective"])
        run.update(saved["run"])
        last_good = run["step"]
        if run["schedule"] != schedule:
            run["schedule_changes"] = [*run["schedule_changes"], {"step": run["step"], "from": run["schedule"],
                                                                   "to": schedule}]
            run["schedule"] = schedule
        if env.is_main:
            changed = f" with lr {schedule['lr']:g}, warmup {schedule['warmup_steps']}" \
                if run["schedule_changes"] and run["schedule_changes"][-1]["step"] == run["step"] else ""
            log(f"resuming {recipe['name']} from step {run['step']}{changed} ({state_dir / STATE_FILE})")
    del saved

    def checkpoint(proven: bool) -> None:
        """Write the state: as last.pt when proven (a stop), else as next.pt until the next step proves it."""
        nonlocal last_good, pending
        on_main(env, lambda: save_state(state_dir, {
            "recipe_hash": fingerprint, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
            "objective": objective.state_dict(), "run": dict(run)}, STATE_FILE if proven else PENDING_FILE))
        if proven:
            last_good, pending = run["step"], None
        else:
            pending = run["step"]

    def promote() -> None:
        nonlocal last_good, pending
        if pending is not None:
            on_main(env, lambda: promote_pending(state_dir))
            last_good, pending = pending, None

    def diverged(step: int, what: str) -> UserError:
        if env.is_main:
            discard_pending(state_dir)
        where = recipe.get("file", "the recipe")
        if last_good is not None:
            kept = f"the last good checkpoint (step {last_good}) is kept in {state_dir}"
            then = "resumes from it"
        else:
            kept = "no checkpoint was written yet"
            then = "starts again"
        return UserError(f"training diverged at step {step + 1}/{total_steps}: {what}; {kept}; lower optim.lr "
                         f"(now {optim['lr']:g}) or raise optim.warmup_steps (now {optim['warmup_steps']}) in "
                         f"{where} and rerun the same command, which {then}")

    stats = ReadStats(run["read"], list(run["skipped_examples"]), set(run["skipped_keys"]))
    window_loss, window_start, window_steps = 0.0, time.perf_counter(), 0
    segment_start = time.perf_counter()
    while run["step"] < total_steps:
        produced, read_before = 0, stats.read
        batches = iterate_batches(source, transform, tokenizer, optim["batch_size"], recipe["seed"], run["epoch"],
                                  env.rank, env.world_size, run["batch_in_epoch"], recipe["data"]["shuffle_buffer"],
                                  stats)
        for batch in batches:
            produced += 1
            step = run["step"]
            lr = cosine_lr(step, total_steps, optim["lr"], optim["warmup_steps"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(recipe["seed"] * 1_000_003 + step)
            batch.step = step
            batch.views = [v.to(env.device, non_blocking=True) for v in batch.views]
            batch.tokens = batch.tokens.to(env.device)

            def one_step():
                with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext():
                    outputs = ddp(objective.student_forward, batch)
                    losses = objective.losses(outputs, batch, step)
                finite = all_ranks_true(env, bool(torch.isfinite(losses["loss"]).item()))
                if not finite:
                    return losses, False
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()  # bfloat16 autocast needs no loss scaling
                return losses, True

            if run["flops_per_step"] is None:
                (losses, finite), flops = measure_step_flops(one_step)
                run["flops_per_step"] = flops * env.world_size
            else:
                losses, finite = one_step()
            if not finite:
                raise diverged(step, f"the loss is {losses['loss'].item()}")
            # A finite loss can still have non-finite gradients, and one step on them makes every weight NaN.
            bad = first_nonfinite((name, p.grad) for name, p in student.named_parameters())
            if not all_ranks_true(env, bad is None):
                raise diverged(step, f"the gradient of {bad or 'a parameter on another process'} is not finite "
                                     f"(loss {losses['loss'].item():.4g})")
            promote()  # the weights of the pending checkpoint gave a finite loss and finite gradients
            apply_update(student, optimizer, objective, optim["grad_clip"])
            # Nothing that is not finite is ever checkpointed or exported.
            bad = first_nonfinite([*student.state_dict().items(), *named_tensors(objective.state_dict(), "objective")])
            if not all_ranks_true(env, bad is None):
                raise diverged(step, f"{bad or 'a weight on another process'} is not finite after the update")
            run["step"] += 1
            run["batch_in_epoch"] += 1
            run["images_seen"] += optim["batch_size"]
            window_loss += losses["loss"].item()
            window_steps += 1
            done = run["step"] >= total_steps
            if env.is_main and (run["step"] % optim["log_every"] == 0 or done):
                elapsed = time.perf_counter() - window_start
                terms = {k: v.item() for k, v in losses.items() if k != "loss"}
                diagnostics = objective.diagnostics()
                parts = " ".join(f"{k} {v:.4f}" for k, v in {**terms, **diagnostics}.items())
                mean_loss = window_loss / window_steps
                run["loss_history"].append([run["step"], round(mean_loss, 6)])
                run["diagnostics"].append({"step": run["step"],
                                           **{k: round(v, 6) for k, v in {**terms, **diagnostics}.items()}})
                warning = objective.warning()
                if warning is not None and warning.kind not in {w["kind"] for w in run["warnings"]}:
                    run["warnings"].append({"step": run["step"], "kind": warning.kind, "warning": warning.message})
                    warn(f"step {run['step']}: {warning.message}")
                if progress:
                    log(f"step {run['step']:>6d}/{total_steps} epoch {run['epoch']} loss {mean_loss:.4f} {parts} "
                        f"lr {lr:.2e} {window_steps * optim['batch_size'] / elapsed:.0f} img/s")
                window_loss, window_start, window_steps = 0.0, time.perf_counter(), 0
            if optim["eval_every"] and recipe["eval_suite"] and (run["step"] % optim["eval_every"] == 0 or done):
                if evaluator is not None:
                    scores = evaluator(student.clip)
                    run["eval_history"].append({"step": run["step"], **scores})
                    if progress:
                        log(f"eval at step {run['step']}: "
                            + ", ".join(f"{k} {100 * v:.2f}" for k, v in scores.items()))
                barrier(env)  # the other ranks wait for rank 0's evaluation
            run["elapsed_s"] += time.perf_counter() - segment_start
            segment_start = time.perf_counter()
            run.update(read=stats.read, skipped=stats.skipped, skipped_examples=list(stats.examples),
                       skipped_keys=sorted(stats.keys))
            asked = not all_ranks_true(env, not requested)  # a signal reached some rank: all stop here
            stopping = ((stop_after_steps is not None and run["step"] >= stop_after_steps) or asked) and not done
            if (optim["checkpoint_every"] and run["step"] % optim["checkpoint_every"] == 0) or stopping:
                checkpoint(proven=stopping)
            if stopping:
                if asked:
                    number = requested[0] if requested else signal.SIGTERM
                    raise Stopped(f"{signal.Signals(number).name}: stopped at step {run['step']} of {total_steps}, "
                                  f"state saved in {state_dir}; the same command resumes from there", number)
                return None
            if done:
                break
        else:
            if produced == 0 and run["batch_in_epoch"] == 0:
                if stats.read == read_before:
                    example = f", e.g. {stats.examples[0]}" if stats.examples else ""
                    raise UserError(f"no sample of the training data could be read ({stats.skipped} unreadable"
                                    f"{example}); check the images and captions the recipe's data section names")
                raise UserError(f"an epoch of the training data yields no full batch of {optim['batch_size']} "
                                f"({stats.read - read_before} readable samples); lower optim.batch_size or add data")
            run["epoch"] += 1
            run["batch_in_epoch"] = 0
    if stats.skipped and env.is_main:
        log(f"skipped {stats.skipped} unreadable samples, e.g. {'; '.join(stats.examples[:2])}")
    if keep_state:
        promote()  # finite, though no further step proved it: the run is over
    bad = first_nonfinite(student.clip.state_dict().items())
    if bad is not None:  # checked after every update already; never export a broken model
        raise UserError(f"the trained weights are not finite ({bad}); nothing was exported")
    card = on_main(env, lambda: export(recipe, config, student, objective, work, output, data_info, run, env))
    if env.is_main and not keep_state:
        shutil.rmtree(work, ignore_errors=True)
    barrier(env)
    if env.is_main and evaluate and recipe["eval_suite"]:
        card = add_reference_scores(output, recipe.get("eval_suite", "quick"), env.device, progress)
    return card


def export(recipe, config, student, objective, work: Path, output: Path, data_info, run, env: DistEnv) -> dict:
    """Write the final open_clip local-dir and card into output atomically; returns the card.

    A failed write (a full disk) leaves no half-written folder and is a UserError naming output.
    """
    from safetensors import SafetensorError

    try:
        with atomic_directory(output) as staging:
            for name in TOKENIZER_FILES:
                shutil.copy2(work / name, staging / name)
            weights = save_local_dir(student.clip.eval(), config, staging)
            card = make_card(output.name, recipe, config, student, objective, weights, data_info, run, env)
            atomic_write_text(staging / CARD_FILE, yaml.safe_dump(card, sort_keys=False))
    except (OSError, SafetensorError) as exc:  # safetensors reports a failed write as a SafetensorError
        raise write_error(output, exc if isinstance(exc, OSError) else RuntimeError(str(exc))) from None
    return card


def make_card(name: str, recipe, config, student, objective, weights: Path, data_info, run, env: DistEnv) -> dict:
    """Return the model card of a finished run, with its compute accounting (reference scores come later)."""
    from silc_eval.core.fingerprint import file_sha256

    views = objective.views
    return {
        "name": name,
        "description": " ".join(str(recipe.get("description", "")).split()),
        "format": "open_clip local-dir (open_clip_config.json + open_clip_model.safetensors + tokenizer)",
        "architecture": config["model_cfg"],
        "parameters": sum(p.numel() for p in student.clip.parameters()),
        "weights": {"file": WEIGHTS_FILE, "sha256": file_sha256(weights)},
        "training": {
            "recipe": recipe["name"], "weights_hash": trained_weights_hash(recipe), "objective": recipe["objective"],
            "seed": recipe["seed"],
            "optim": recipe["optim"], "data": data_info, "steps": run["step"], "epochs_started": run["epoch"] + 1,
            "samples_skipped": run["skipped"], **objective.card_info(),
            **({"schedule_changes": run["schedule_changes"]} if run.get("schedule_changes") else {}),
        },
        "compute": {
            "images_seen": run["images_seen"], "views_per_image": views.n_views,
            "view_sizes": [views.global_size] * views.n_global + [views.local_size] * views.n_local,
            "training_flops": int(run["flops_per_step"] or 0) * run["step"],
            "flops_per_step": int(run["flops_per_step"] or 0),
            "flops_counted_by": "torch.utils.flop_counter (forward + backward + teacher forwards, all ranks)",
            "wall_time_s": round(run["elapsed_s"], 1), "device": env.device, "processes": env.world_size,
            "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        },
        "eval_history": run["eval_history"],
        "loss_history": run["loss_history"],
        "diagnostics": {"history": run.get("diagnostics", []), "warnings": run.get("warnings", [])},
        "provenance": {"git_commit": git_commit(), "packages": package_versions()},
    }


def add_reference_scores(folder: Path, suite: str, device: str, progress: bool) -> dict:
    """Evaluate a trained local-dir on every benchmark of a suite (the public evaluate function) and store the
    scores in its card; returns the card."""
    card_path = Path(folder) / CARD_FILE
    card = read_card(card_path)
    model = load_model(local_dir_spec(folder), device=device)
    scores = {}
    for benchmark in resolve_suite(suite):
        splits = build_splits(benchmark, dataset_root(benchmark.dataset, None, None), model.preprocess)
        metrics = evaluate_benchmark(model, benchmark, splits, progress).outcome.metrics
        scores[benchmark.name] = {k: None if v is None else round(float(v), 6) for k, v in metrics.items()}
    card["reference_suite"] = suite
    card["reference_scores"] = scores
    try:
        atomic_write_text(card_path, yaml.safe_dump(card, sort_keys=False))
    except OSError as exc:
        raise write_error(card_path, exc) from None
    return card
