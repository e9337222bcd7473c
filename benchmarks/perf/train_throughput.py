"""Training-step throughput: silc-eval's training step vs the same step written plainly with open_clip.

In one process, on one model config (a recipe's `model:` section, default recipe `clip`) and
one pre-built batch held in memory (images already decoded, cropped and normalised, captions
already tokenized; data loading is NOT measured), measures training samples/s of
  (a) silc-eval's training step: the operations of one step of silc_eval.train.loop._train,
      built with the project's own pieces (build_objective, build_student/StudentModule,
      param_groups, cosine_lr, AdamW) and run in the loop's order;
  (b) the same model (create_model of the same config) + open_clip.loss.ClipLoss + AdamW,
      written plainly: model(images, tokens) -> loss -> backward -> clip -> step -> clamp;
then prints medians over --repeats timed windows and the ratio (a)/(b); and
  (c) the cost per step of the recipes in --recipes (default silc, views-only, sfclip) relative
      to clip at the same batch size: median seconds per step through the same loop step, each
      objective with its own views built from the same source images, and the FLOPs of one step
      counted as the trainer counts them (torch.utils.flop_counter, forward + backward +
      teacher forwards).

Run from the repository root:  .venv/bin/python benchmarks/perf/train_throughput.py
See benchmarks/perf/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

WARMUP_STEPS = 2


# ----------------------------------------------------------------------------- timing helpers

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_window(step_fn, steps: int, device: torch.device) -> float:
    """Return the seconds of `steps` calls of step_fn(), synchronising CUDA before and after."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step_fn()
    _sync(device)
    return time.perf_counter() - start


def autocast(use_amp: bool):
    """Return the bf16 autocast context the trainer uses on CUDA with --amp (nothing otherwise)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()


# ----------------------------------------------------------------------------- source batch

@dataclass
class SourceBatch:
    """One global batch before augmentation: decoded RGB images, captions, tokens and stream positions."""

    images: list
    captions: list[str]
    tokens: torch.Tensor
    positions: torch.Tensor
    seed: int
    origin: str


def synthscenes_batch(recipe: dict, tokenizer, batch_size: int) -> SourceBatch:
    """Return the first global batch of epoch 0 of the recipe's SynthScenes training stream.

    It is read with silc_eval.train.pairs.iterate_batches exactly as the trainer reads it
    (same seed, epoch, shuffle buffer); the transform only keeps the decoded images, which
    each objective then crops into its own views below.
    """
    from silc_eval.producers.synthscenes import SynthScenesConfig, default_cache_root, ensure_synthscenes
    from silc_eval.train.pairs import PairSource, iterate_batches, list_shards

    data = recipe["data"]
    if data["source"] != "synthscenes":
        raise SystemExit(f"recipe {recipe['name']}: data.source is {data['source']}; this script reads SynthScenes "
                         f"(or use --synthetic)")
    config = SynthScenesConfig(n_train=data["n_train"])
    if not (default_cache_root(config) / "synthscenes" / "train" / "manifest.json").exists():
        print(f"note: SynthScenes training shards are not in the cache; generating them into "
              f"{default_cache_root(config)} (once)", flush=True)
    root = ensure_synthscenes(None, parts=("train",), config=config, progress=False)
    part = root / "synthscenes" / "train"
    source = PairSource("webdataset", shards=list_shards(part / "shards"), size=data["n_train"])
    images = []

    def keep_image(image, generator):
        images.append(image)
        return [torch.zeros(1)]

    batch = next(iter(iterate_batches(source, keep_image, tokenizer, batch_size, recipe["seed"], 0,
                                      shuffle_buffer=data["shuffle_buffer"])), None)
    if batch is None:
        raise SystemExit(f"SynthScenes training part under {part} has fewer than {batch_size} pairs")
    return SourceBatch(images, list(batch.captions), batch.tokens, batch.positions, recipe["seed"],
                       f"SynthScenes train, first batch of epoch 0 ({part})")


def synthetic_batch(recipe: dict, tokenizer, batch_size: int, image_size: int) -> SourceBatch:
    """Return a batch of random RGB images and random captions over the SynthScenes vocabulary."""
    import numpy as np
    from PIL import Image

    from silc_eval.producers.synthscenes import vocabulary

    rng = np.random.default_rng(0)
    words = [w for w in vocabulary() if w.isalpha()]
    images = [Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))
              for _ in range(batch_size)]
    captions = [" ".join(rng.choice(words, size=8)) for _ in range(batch_size)]
    return SourceBatch(images, captions, tokenizer(captions), torch.arange(batch_size), recipe["seed"],
                       f"--synthetic: random {image_size} px images and 8-word captions")


def make_views(spec, source: SourceBatch) -> list[torch.Tensor]:
    """Return the stacked views of spec for every source image, as iterate_batches builds them (epoch 0)."""
    from silc_eval.train.augment import MultiViewTransform, sample_generator
    from silc_eval.train.loop import SYNTH_MEAN, SYNTH_STD

    transform = MultiViewTransform(spec, SYNTH_MEAN, SYNTH_STD)
    per_sample = [transform(image, sample_generator(source.seed, 0, int(position)))
                  for image, position in zip(source.images, source.positions)]
    return [torch.stack([sample[v] for sample in per_sample]) for v in range(len(per_sample[0]))]


# ----------------------------------------------------------------------------- (a) and (c): the loop's step

class LoopStep:
    """One optimiser step of silc_eval.train.loop._train, for one recipe's objective, on a fixed batch.

    Built with the trainer's own functions; __call__ runs the body of _train's batch loop in
    its order (lr schedule, per-step seed, student forward through StudentModule, losses,
    finiteness check, zero_grad, backward, unscale + clip_grad_norm, AdamW step, logit-scale
    clamp, after_step, loss.item()) minus logging, evaluation and checkpoints.
    """

    def __init__(self, recipe: dict, model_section: dict, config: dict, tokenizer, env, source: SourceBatch,
                 use_amp: bool):
        from silc_eval.train.factory import build_objective
        from silc_eval.train.loop import build_student, count_steps, param_groups
        from silc_eval.train.pairs import Batch

        self.recipe = {**recipe, "model": model_section}
        optim = self.recipe["optim"]
        self.optim, self.env, self.use_amp = optim, env, use_amp
        image_size = model_section["vision"]["image_size"]
        self.objective = build_objective(self.recipe["objective"], image_size, env.rank, env.world_size)
        self.student = build_student(self.recipe, config, self.objective, env, tokenizer)
        self.optimizer = torch.optim.AdamW(param_groups(self.student, optim["weight_decay"]), lr=optim["lr"],
                                           betas=tuple(optim["betas"]), eps=optim["eps"])
        self.ddp = self.student  # one process: the loop calls the StudentModule itself
        self.total_steps = count_steps(self.recipe, self.recipe["data"]["n_train"])
        views = [v.to(env.device) for v in make_views(self.objective.views, source)]
        self.batch = Batch(views, source.tokens.to(env.device), list(source.captions), source.positions.clone())
        self.step = 0
        self.flops: int | None = None
        self.last_loss = float("nan")

    @property
    def n_views(self) -> int:
        return self.objective.views.n_views

    def __call__(self, count_flops: bool = False) -> None:
        from silc_eval.train.loop import apply_update, cosine_lr, measure_step_flops

        objective, optimizer, student, batch = self.objective, self.optimizer, self.student, self.batch
        optim, step = self.optim, self.step
        lr = cosine_lr(step, self.total_steps, optim["lr"], optim["warmup_steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(self.recipe["seed"] * 1_000_003 + step)
        batch.step = step

        def one_step():
            with autocast(self.use_amp):
                outputs = self.ddp(objective.student_forward, batch)
                losses = objective.losses(outputs, batch, step)
            finite = bool(torch.isfinite(losses["loss"]).item())  # all_ranks_true on one process
            if not finite:
                return losses, False
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            return losses, True

        if count_flops:
            (losses, finite), self.flops = measure_step_flops(one_step)
        else:
            losses, finite = one_step()
        if not finite:
            raise SystemExit(f"{self.recipe['name']}: loss is not finite at benchmark step {step}")
        apply_update(student, optimizer, objective, optim["grad_clip"])
        self.last_loss = losses["loss"].item()  # the loop's window_loss += losses["loss"].item()
        self.step += 1


# ----------------------------------------------------------------------------- (b): plain open_clip

class PlainOpenClipStep:
    """The same model, ClipLoss and AdamW written plainly, as open_clip's own training script does it."""

    def __init__(self, recipe: dict, config: dict, images: torch.Tensor, tokens: torch.Tensor, device: str,
                 use_amp: bool):
        from open_clip.loss import ClipLoss

        from silc_eval.train.model_config import create_model

        optim = recipe["optim"]
        torch.manual_seed(recipe["seed"])
        self.model = create_model(config).to(device).train()
        self.model.output_dict = True
        named = list(self.model.named_parameters())
        exclude = [p for n, p in named if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n]
        include = [p for n, p in named if not (p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n
                                               or "logit_scale" in n)]
        self.optimizer = torch.optim.AdamW([{"params": exclude, "weight_decay": 0.0},
                                            {"params": include, "weight_decay": optim["weight_decay"]}],
                                           lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"])
        self.loss = ClipLoss()
        self.grad_clip = optim["grad_clip"]
        self.images, self.tokens, self.use_amp = images, tokens, use_amp
        self.flops: int | None = None

    def forward_backward(self) -> torch.Tensor:
        with autocast(self.use_amp):
            out = self.model(self.images, self.tokens)
            losses = self.loss(**out, output_dict=True)
            total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        return total

    def __call__(self, count_flops: bool = False) -> None:
        if count_flops:
            from silc_eval.train.loop import measure_step_flops

            _, self.flops = measure_step_flops(self.forward_backward)
        else:
            self.forward_backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))


# ----------------------------------------------------------------------------- sfclip's teachers

def sfclip_section(recipe: dict, vision_teacher: str | None, scratch: Path) -> dict:
    """Return sfclip's objective section with a usable vision teacher (--vision-teacher, the recipe's, or fresh)."""
    from silc_eval.train.sfclip import resolve_teacher_path

    section = dict(recipe["objective"]) if isinstance(recipe["objective"], dict) else {"name": recipe["objective"]}
    if vision_teacher:
        section["vision_teacher"] = vision_teacher
        return section
    spec = section.get("vision_teacher")
    if spec and spec.startswith("local-dir:"):
        folder = Path(resolve_teacher_path(spec)[len("local-dir:"):])
        if not folder.exists():
            section["vision_teacher"] = build_fresh_teacher(recipe["model"], scratch / "fresh-vision-teacher")
            print(f"note: sfclip's vision teacher {spec} does not exist (yet); using a freshly initialised "
                  f"open_clip local-dir of the sfclip recipe's model section instead ({section['vision_teacher']}): "
                  f"same architecture, same cost", flush=True)
    return section


def build_fresh_teacher(model_section: dict, folder: Path) -> str:
    """Write a randomly initialised open_clip local-dir of model_section into folder; returns its spec."""
    from silc_eval.producers.synthscenes import vocabulary
    from silc_eval.train.loop import SYNTH_MEAN, SYNTH_STD
    from silc_eval.train.model_config import create_model, open_clip_config, save_local_dir
    from silc_eval.train.tokenizer import save_word_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = save_word_tokenizer(vocabulary(), folder)
    config = open_clip_config(model_section, vocab_size, SYNTH_MEAN, SYNTH_STD)
    torch.manual_seed(0)
    save_local_dir(create_model(config), config, folder)
    return f"local-dir:{folder}"


# ----------------------------------------------------------------------------- main

def fmt_rate(values: list[float]) -> str:
    return f"{statistics.median(values):10.1f} samples/s  (min {min(values):.1f}, max {max(values):.1f})"


def fmt_flops(flops: int | None) -> str:
    return "n/a" if flops is None else f"{flops / 1e9:.2f} GFLOP"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="clip",
                        help="recipe name or YAML whose model section, optim settings and objective (a) uses "
                             "(default: clip; (a) vs (b) is like for like only for a clip-objective recipe)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window (default: 10)")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per measurement (default: 5)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--amp", action="store_true",
                        help="bf16 autocast in (a), (b) and (c), as `silc-eval train --amp` (CUDA only)")
    parser.add_argument("--recipes", default="silc,views-only,sfclip",
                        help="comma-separated recipes whose step cost (c) compares with clip's ('' to skip)")
    parser.add_argument("--vision-teacher", default=None,
                        help="vision teacher spec for sfclip in (c) (default: the recipe's; a freshly initialised "
                             "one of the same architecture when that folder does not exist)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--synthetic", action="store_true",
                        help="random images and captions instead of the SynthScenes training shards (quick smoke)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="silc-train-perf-") as scratch:
        return measure(args, Path(scratch))


def measure(args, scratch: Path) -> int:
    from silc_eval.core.offline import enforce_offline

    enforce_offline()
    import open_clip

    from silc_eval.core.distributed import DistEnv
    from silc_eval.train.loop import prepare_work_folder
    from silc_eval.train.recipe import load_recipe

    base = load_recipe(args.recipe, {"batch_size": args.batch_size})
    batch_size = int(base["optim"]["batch_size"])
    env = DistEnv(device=args.device)
    device = torch.device(args.device)
    use_amp = args.amp and device.type == "cuda"
    if args.amp and not use_amp:
        print("note: --amp is ignored on cpu, as in the trainer (it autocasts on CUDA only)")
    work = scratch / "work"
    config = prepare_work_folder(base, work, env)  # tokenizer + open_clip config, as the trainer writes them
    tokenizer = open_clip.get_tokenizer(f"local-dir:{work}")
    image_size = base["model"]["vision"]["image_size"]
    source = synthetic_batch(base, tokenizer, batch_size, image_size) if args.synthetic \
        else synthscenes_batch(base, tokenizer, batch_size)

    ours = LoopStep(base, base["model"], config, tokenizer, env, source, use_amp)
    images = ours.batch.views[0]
    plain = PlainOpenClipStep(base, config, images, ours.batch.tokens, args.device, use_amp)
    n_params = sum(p.numel() for p in plain.model.parameters())
    objective_name = base["objective"] if isinstance(base["objective"], str) else base["objective"]["name"]
    print(f"recipe     {base['name']} (objective {objective_name}); model {n_params / 1e6:.2f} M params, "
          f"image {image_size} px, context {base['model']['text']['context_length']}")
    print(f"batch      {batch_size} samples, {source.origin}; pre-built and kept on {device} "
          f"(data loading and host-to-device copies are not timed)")
    print(f"machine    {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {device}, amp {'bf16' if use_amp else 'off'}")
    print(f"timing     {WARMUP_STEPS} warm-up steps, then {args.repeats} windows of {args.steps} steps, interleaved")

    ours(count_flops=True)
    plain(count_flops=True)
    for _ in range(WARMUP_STEPS - 1):
        ours()
        plain()
    rates = {"ours": [], "plain": []}
    for repeat in range(args.repeats):  # interleaved, alternating which goes first
        order = [("ours", ours), ("plain", plain)]
        for name, fn in (order if repeat % 2 == 0 else order[::-1]):
            seconds = time_window(fn, args.steps, device)
            rates[name].append(args.steps * batch_size / seconds)
    ratio = statistics.median(rates["ours"]) / statistics.median(rates["plain"])
    print(f"\ntraining throughput, median of {args.repeats} windows:")
    label = f"(a) silc-eval loop step ({base['name']})"
    print(f"  {label:<42s} {fmt_rate(rates['ours'])}   {fmt_flops(ours.flops)}/step")
    label = "(b) plain open_clip + ClipLoss + AdamW"
    print(f"  {label:<42s} {fmt_rate(rates['plain'])}   {fmt_flops(plain.flops)}/step")
    print(f"  (a) / (b) = {ratio:.3f}   (goal >= 0.95)")
    del ours, plain

    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    if names:
        measure_recipes(names, base, config, tokenizer, env, source, use_amp, args, scratch, device, batch_size)
    return 0


def measure_recipes(names, base, config, tokenizer, env, source, use_amp, args, scratch, device, batch_size):
    """(c): seconds and FLOPs per step of each recipe's objective relative to clip's, same model and batch size."""
    from silc_eval.train.recipe import load_recipe

    runners = {}
    for name in ["clip"] + [n for n in names if n != "clip"]:
        recipe = load_recipe(name, {"batch_size": batch_size})
        if recipe["model"] != base["model"]:
            print(f"note: recipe {name} has its own model section; (c) uses {base['name']}'s for every recipe")
        objective = recipe["objective"]
        if (objective if isinstance(objective, str) else objective.get("name")) == "sfclip":
            recipe["objective"] = sfclip_section(recipe, args.vision_teacher, scratch)
        runners[name] = LoopStep(recipe, base["model"], config, tokenizer, env, source, use_amp)
    for runner in runners.values():
        runner(count_flops=True)
        for _ in range(WARMUP_STEPS - 1):
            runner()
    seconds = {name: [] for name in runners}
    for repeat in range(args.repeats):
        order = list(runners.items())
        for name, runner in (order if repeat % 2 == 0 else order[::-1]):
            seconds[name].append(time_window(runner, args.steps, device) / args.steps)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    clip_s, clip_flops = median["clip"], runners["clip"].flops
    print(f"\nper-step cost at batch {batch_size} relative to clip (same model; each objective with its own "
          f"views; median of {args.repeats} windows):")
    print(f"  {'recipe':<12s} {'views':>5s} {'s/step':>9s} {'x clip':>7s} {'samples/s':>10s} "
          f"{'GFLOP/step':>11s} {'x clip':>7s}")
    for name, runner in runners.items():
        flops = runner.flops or 0
        print(f"  {name:<12s} {runner.n_views:>5d} {median[name]:>9.4f} {median[name] / clip_s:>7.2f} "
              f"{batch_size / median[name]:>10.1f} {flops / 1e9:>11.2f} {flops / clip_flops:>7.2f}")
    if "sfclip" in runners:
        print("  note: sfclip caches the text teacher's features per caption; with one fixed batch only the "
              "first (FLOP-counted) step runs the text teacher, so its s/step leaves that forward out while its "
              "FLOPs include it")


if __name__ == "__main__":
    sys.exit(main())
