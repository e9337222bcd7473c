"""How many optimiser steps the trained segmentation heads need, chosen on held-out TRAINING scenes.

The evaluation split is never looked at: the benchmark's training split is cut (seeded) into a
fitting part and a held-out part; every head is fitted on the first and scored on the second,
for each step budget, seed and model. The learning-rate schedule (poly decay to zero) scales
with the step budget, so every budget is a complete run.

    .venv/bin/python benchmarks/studies/head_steps.py --models clip-vit-tiny-synth,silc-vit-tiny-synth \
        --steps 100,200,500 --seeds 0,1,2 --output reports/studies/head_steps.md

Prints (and writes as Markdown) per benchmark, model and budget the held-out main metric's mean
and standard deviation over seeds, and the training time per head.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path

import torch

from silc_eval.core.io import atomic_write_text
from silc_eval.data.segmentation import SegmentationDataset
from silc_eval.evaluate.api import build_splits, dataset_root
from silc_eval.models.loading import load_model
from silc_eval.registry import resolve_benchmarks

BENCHMARKS = ("synthscenes-openvocab-seg",)  # the linear probe is solved now: see linear_probe_fit.py


def part(dataset: SegmentationDataset, indices: list[int], tag: str) -> SegmentationDataset:
    """Return the SegmentationDataset of dataset's images at indices (its own fingerprint)."""
    fingerprint = hashlib.sha256(f"{dataset.fingerprint}:{tag}:{indices}".encode()).hexdigest()[:16]
    out = SegmentationDataset([dataset.image_paths[i] for i in indices], [dataset.annotation_paths[i] for i in indices],
                              dataset.classes, dataset.templates, dataset.reduce_zero_label, f"{dataset.name}/{tag}",
                              fingerprint)
    out.class_names = list(dataset.class_names)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="clip-vit-tiny-synth,silc-vit-tiny-synth")
    parser.add_argument("--steps", default="100,200,500")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lrs", default="", help="learning rates to try (default: the benchmark's)")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    parser.add_argument("--held-out", type=float, default=0.25, help="fraction of the training scenes held out")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = ["| benchmark | model | steps | lr | held-out main metric (mean ± sd over seeds) | per seed | s per head |",
            "|---|---|---:|---:|---:|---|---:|"]
    for benchmark in resolve_benchmarks(args.benchmarks.split(",")):
        rates = [float(r) for r in args.lrs.split(",")] if args.lrs else [benchmark.protocol()["lr"]]
        task = benchmark.task_spec
        for model_spec in args.models.split(","):
            model = load_model(model_spec, "cpu")
            splits = build_splits(benchmark, dataset_root(benchmark.dataset, None, None), model.preprocess)
            train = splits["train"]
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1234)).tolist()
            cut = int(len(train) * args.held_out)
            data = {"train": part(train, sorted(order[cut:]), "fit"), "eval": part(train, sorted(order[:cut]), "held")}
            for budget, lr in [(b, r) for b in steps for r in rates]:
                params = benchmark.protocol() | {"steps": budget, "seeds": seeds, "lr": lr}
                started = time.perf_counter()
                metrics = task.evaluate(model, data, params, progress=False).metrics
                seconds = (time.perf_counter() - started) / len(seeds)
                values = [metrics[f"{benchmark.main_metric}_seed{s}"] for s in seeds]
                line = (f"| {benchmark.name} | {model_spec} | {budget} | {lr:g} | {100 * statistics.mean(values):.2f} ± "
                        f"{100 * statistics.stdev(values):.2f} | {', '.join(f'{100 * v:.2f}' for v in values)} | "
                        f"{seconds:.1f} |")
                print(line, flush=True)
                rows.append(line)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.output, "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
