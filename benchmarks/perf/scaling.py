"""How cost grows: wall time of zero-shot classification and zero-shot segmentation at 1x, 4x, 16x images.

SynthScenes is generated into a temporary folder once per scale, with the classification
validation split and the segmentation validation split --scales times their 1x size (every
item is drawn from its own seeded RNG, so the 1x images are the first images of the 4x and
16x sets). One model is loaded; for each scale the benchmark's dataset is built over that
folder with the evaluate flow's own build_splits, and evaluate_benchmark (the task's whole
work: prompts, image decoding and transforms, the model, metrics) is timed with the feature
cache switched off, so every run computes. Runs are interleaved over --repeats (alternating
the order); the table gives medians: images, seconds, seconds per image, that per-image cost
over the 1x one, and the marginal seconds per image between consecutive scales. Linear cost
means a constant marginal cost (the per-image ratio may fall below 1 as the fixed cost of the
text classifier is spread over more images).

Run from the repository root:  .venv/bin/python benchmarks/perf/scaling.py
See benchmarks/perf/README.md. Nothing here is a test: it prints numbers, it asserts none.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TASKS = ("classification", "segmentation")


def parse_scales(text: str) -> list[int]:
    """Return the sorted distinct positive integers of a comma-separated list (e.g. '1,4,16')."""
    try:
        scales = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not scales or scales[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return scales


def synthscenes_config(scale: int, per_class: int, segmentation_images: int):
    """Return the SynthScenesConfig of one scale: only the two validation splits, scale times their 1x size."""
    from silc_eval.producers.synthscenes import SynthScenesConfig

    return SynthScenesConfig(n_cls_val_per_class=scale * per_class, n_cls_train_per_class=0,
                             n_retrieval=0, n_seg_train=0, n_seg_val=scale * segmentation_images, n_train=0)


def generate(scratch: Path, scales: list[int], per_class: int, segmentation_images: int, workers: int) -> dict:
    """Write SynthScenes (classification + segmentation parts) of every scale under scratch; returns {scale: root}."""
    from silc_eval.producers.synthscenes import write_synthscenes

    roots = {}
    for scale in scales:
        config = synthscenes_config(scale, per_class, segmentation_images)
        roots[scale] = write_synthscenes(scratch / f"x{scale}", config, parts=("classification", "segmentation"),
                                         progress=False, workers=workers)
    return roots


def build_datasets(benchmarks: dict, roots: dict, model) -> dict:
    """Return {(task, scale): splits} built with the evaluate flow's build_splits over each scale's folder."""
    from silc_eval.evaluate.api import build_splits

    return {(task, scale): build_splits(benchmarks[task], root, model.preprocess)
            for task in TASKS for scale, root in roots.items()}


def timed_evaluation(model, benchmark, splits) -> float:
    """Return the wall seconds of evaluate_benchmark with the feature cache off (CUDA synchronised around it)."""
    from silc_eval.evaluate.api import evaluate_benchmark
    from silc_eval.features.cache import switched_off

    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(model.device)
    started = time.perf_counter()
    with switched_off():
        evaluate_benchmark(model, benchmark, splits, progress=False)
    if cuda:
        torch.cuda.synchronize(model.device)
    return time.perf_counter() - started


def measure(model, benchmarks: dict, datasets: dict, repeats: int) -> dict:
    """Return {(task, scale): [seconds per repeat]}: one warm-up per task, then interleaved, alternating runs."""
    keys = sorted(datasets, key=lambda key: (TASKS.index(key[0]), key[1]))
    for task in TASKS:  # warm-up (not timed): lazy initialisation, allocator growth, file cache
        smallest = min(scale for t, scale in keys if t == task)
        timed_evaluation(model, benchmarks[task], datasets[(task, smallest)])
    seconds = {key: [] for key in keys}
    for repeat in range(repeats):
        for key in (keys if repeat % 2 == 0 else keys[::-1]):
            seconds[key].append(timed_evaluation(model, benchmarks[key[0]], datasets[key]))
    return seconds


def table_rows(times: dict[int, list[float]], sizes: dict[int, int]) -> list[tuple]:
    """Return per scale (scale, images, median s, s/image, ratio to the 1x s/image, marginal s/image or None)."""
    rows, previous = [], None
    base_scale = min(times)
    base = statistics.median(times[base_scale]) / sizes[base_scale]
    for scale in sorted(times):
        seconds = statistics.median(times[scale])
        per_image = seconds / sizes[scale]
        marginal = None
        if previous is not None and sizes[scale] > sizes[previous[0]]:
            marginal = (seconds - previous[1]) / (sizes[scale] - sizes[previous[0]])
        rows.append((scale, sizes[scale], seconds, per_image, per_image / base, marginal))
        previous = (scale, seconds)
    return rows


def print_table(name: str, benchmark, rows: list[tuple], times: dict[int, list[float]]) -> None:
    """Print one task's table: images, seconds, s/image, per-image ratio to 1x, marginal s/image."""
    print(f"\n{name}: {benchmark.name} protocol ({benchmark.task}), median of {len(next(iter(times.values())))}")
    print(f"  {'scale':>5} {'images':>7} {'seconds':>9} {'(min':>8} {'max)':>8} {'ms/image':>9} "
          f"{'x 1x/image':>10} {'marginal ms/image':>18}")
    for scale, images, seconds, per_image, ratio, marginal in rows:
        marginal_text = "" if marginal is None else f"{marginal * 1e3:18.3f}"
        print(f"  {str(scale) + 'x':>5} {images:>7d} {seconds:>9.3f} {min(times[scale]):>8.3f} "
              f"{max(times[scale]):>8.3f} {per_image * 1e3:>9.3f} {ratio:>10.3f} {marginal_text}")
    last = rows[-1]
    print(f"  cost {rows[0][0]}x -> {last[0]}x: {last[2] / rows[0][2]:.2f}x the time for "
          f"{last[1] / rows[0][1]:.0f}x the images")


def main(argv=None) -> int:
    """Parse arguments, generate the data, print the two tables; returns the exit code."""
    from silc_eval.producers.synthscenes import default_workers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="clip-vit-tiny-synth", help="any silc-eval --model spec "
                        "(default: clip-vit-tiny-synth)")
    parser.add_argument("--scales", type=parse_scales, default=[1, 4, 16],
                        help="comma-separated multiples of the 1x sizes (default: 1,4,16)")
    parser.add_argument("--classification-images", type=int, default=250,
                        help="1x size of the classification set, a multiple of its 10 classes (default: 250)")
    parser.add_argument("--segmentation-images", type=int, default=25,
                        help="1x size of the segmentation set (default: 25)")
    parser.add_argument("--classification-benchmark", default="synthscenes-zeroshot",
                        help="zeroshot_classification benchmark whose protocol is used (default: synthscenes-zeroshot)")
    parser.add_argument("--segmentation-benchmark", default="synthscenes-zeroshot-seg-sclip",
                        help="zeroshot_segmentation benchmark whose protocol is used "
                             "(default: synthscenes-zeroshot-seg-sclip)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of every (task, scale) (default: 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help=f"processes rendering SynthScenes (default: {default_workers()})")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.classification_images < 10 or args.classification_images % 10:
        parser.error("--classification-images must be a positive multiple of 10 (the SynthScenes classes)")
    if args.segmentation_images < 1:
        parser.error("--segmentation-images must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="silc-scaling-") as scratch:
        return run(args, Path(scratch))


def run(args, scratch: Path) -> int:
    """Generate, load, measure and print; returns 0."""
    from silc_eval.models import load_model
    from silc_eval.registry import resolve_benchmarks

    names = {"classification": args.classification_benchmark, "segmentation": args.segmentation_benchmark}
    benchmarks = dict(zip(TASKS, resolve_benchmarks([names[task] for task in TASKS])))
    expected = {"classification": "zeroshot_classification", "segmentation": "zeroshot_segmentation"}
    for task, benchmark in benchmarks.items():
        if benchmark.task != expected[task] or benchmark.dataset["source"] != "synthscenes":
            raise SystemExit(f"{benchmark.name} is a {benchmark.task} benchmark on {benchmark.dataset['source']} "
                             f"data; expected a {expected[task]} benchmark on SynthScenes")

    started = time.perf_counter()
    roots = generate(scratch, args.scales, args.classification_images // 10, args.segmentation_images, args.workers)
    generation = time.perf_counter() - started
    model = load_model(args.model, device=args.device)
    datasets = build_datasets(benchmarks, roots, model)
    sizes = {key: len(splits["eval"]) for key, splits in datasets.items()}

    print(f"model      {args.model} ({model.architecture}, "
          f"{sum(p.numel() for p in model.model.parameters()) / 1e6:.2f} M params), device {model.device}")
    print(f"machine    {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"data       SynthScenes at scales {', '.join(f'{s}x' for s in args.scales)} generated in "
          f"{generation:.1f} s (not timed below); feature cache off; one warm-up run per task")

    seconds = measure(model, benchmarks, datasets, args.repeats)
    for task in TASKS:
        times = {scale: seconds[(task, scale)] for scale in args.scales}
        rows = table_rows(times, {scale: sizes[(task, scale)] for scale in args.scales})
        print_table(f"zero-shot {task}", benchmarks[task], rows, times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
