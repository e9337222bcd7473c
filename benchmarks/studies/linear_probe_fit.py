"""How much weight penalty and how many L-BFGS iterations the linear segmentation probe needs, chosen on
held-out TRAINING scenes.

The evaluation split is never read: the benchmark's training split is cut (seed 1234, as in
head_steps.py) into a fitting part and a held-out part; the probe is solved on the first for each
l2 and iteration budget and scored on the second. The old probe (BatchNorm + 1x1 conv, 500 AdamW
steps at lr 0.01, seeds 0, 1, 2) is in reports/studies/head_steps.md on the same cut.

    .venv/bin/python benchmarks/studies/linear_probe_fit.py --models clip-vit-tiny-synth,silc-vit-tiny-synth \
        --l2 1e-5,1e-4 --iterations 30,60,100 --output reports/studies/linear_probe_fit.md

Prints (and writes as Markdown) per model, l2 and budget: held-out mIoU, iterations and loss
evaluations used, the final objective, the largest gradient entry and the solve time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from head_steps import part

from silc_eval.core.io import atomic_write_text
from silc_eval.evaluate.api import build_splits, dataset_root
from silc_eval.machinery import heads
from silc_eval.machinery.convex_probe import fit_linear_probe
from silc_eval.models.loading import load_model
from silc_eval.registry import resolve_benchmarks

BENCHMARK = "synthscenes-linear-seg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="clip-vit-tiny-synth,silc-vit-tiny-synth")
    parser.add_argument("--l2", default="1e-5,1e-4")
    parser.add_argument("--iterations", default="30,60,100")
    parser.add_argument("--held-out", type=float, default=0.25, help="fraction of the training scenes held out")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    benchmark = resolve_benchmarks([BENCHMARK])[0]
    params = benchmark.protocol()
    rows = ["| model | l2 | max iterations | held-out mIoU | iterations | evaluations | objective | "
            "largest gradient entry | s per solve |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model_spec in args.models.split(","):
        model = load_model(model_spec, "cpu")
        train = build_splits(benchmark, dataset_root(benchmark.dataset, None, None), model.preprocess)["train"]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1234)).tolist()
        cut = int(len(train) * args.held_out)
        fit_part, held = part(train, sorted(order[cut:]), "fit"), part(train, sorted(order[:cut]), "held")
        cache = heads.cache_features(model, fit_part, model.patch_tokens, "patch_tokens", params, progress=False)
        for l2 in [float(v) for v in args.l2.split(",")]:
            for budget in [int(v) for v in args.iterations.split(",")]:
                started = time.perf_counter()
                probe, fit = fit_linear_probe(cache.features, cache.labels, train.num_classes, l2, budget, 1e-12,
                                              progress=False)
                seconds = time.perf_counter() - started
                meter = heads.evaluate_heads(model, held, model.patch_tokens, "patch_tokens",
                                             [heads.with_float_input(probe)], params, progress=False)[0]
                line = (f"| {model_spec} | {l2:g} | {budget} | {100 * meter.compute()['mIoU']:.2f} | {fit.iterations} | "
                        f"{fit.evaluations} | {fit.objective:.5f} | "
                        f"{fit.gradient_max:.1e} | {seconds:.1f} |")
                print(line, flush=True)
                rows.append(line)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.output, "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
