"""Feature cache and probe speed: `silc-eval run` without / with a cold / with a warm feature cache,
the share of each run spent in model forward passes, and the k-shot sweep on cached features.

(a) For each --suite (and the optional --benchmark list), four fresh processes run the CLI:
    `off`  (SILC_EVAL_FEATURE_CACHE=off, the behaviour before the cache),
    `cold` (cache on, empty features folder),
    `features` (cache on, filled by `cold`, its fitted segmentation heads removed: features cached, heads
    fitted again), `warm` (cache on, features, fitted heads and fitted probes' predictions cached).
    Each prints its wall time and the time spent inside nn.Module forward calls (outermost
    call only, measured with global forward hooks: the image/text towers, dense variants'
    blocks, and any head the tasks train), which is the floor the cache attacks.
(b) On one model's cached SynthScenes features: the logistic k-shot sweep (k = 1, 2, 5, 10, 25
    x seeds 0, 1, 2, each with its weight-decay search), the full-data probe (3 seeds), and the
    ridge sweep (k = 1, 5, 10, 25 x 3 seeds).

The runs use a temporary SILC_EVAL_CACHE whose SynthScenes data is linked from your own cache
(generated there first if missing), so your cached features are neither read nor touched.

Run from the repository root:  .venv/bin/python benchmarks/perf/probe_and_cache.py --suite quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE_BENCHMARKS = ["synthscenes-linear-probe", "synthscenes-fewshot-ridge"]


def child(argv: list[str]) -> None:
    """Run the CLI in this process with forward-time hooks; print one JSON line of timings."""
    import torch

    state = {"depth": 0, "start": 0.0, "forward_s": 0.0}

    def pre(module, inputs):
        if state["depth"] == 0:
            state["start"] = time.perf_counter()
        state["depth"] += 1

    def post(module, inputs, output):
        state["depth"] -= 1
        if state["depth"] == 0:
            state["forward_s"] += time.perf_counter() - state["start"]

    torch.nn.modules.module.register_module_forward_pre_hook(pre)
    torch.nn.modules.module.register_module_forward_hook(post)
    from silc_eval.cli import main
    from silc_eval.features import cache as feature_cache

    started = time.perf_counter()
    code = main(argv)
    wall = time.perf_counter() - started
    print("PERF " + json.dumps({"rc": code, "wall_s": wall, "forward_s": state["forward_s"],
                                "images_computed": feature_cache.STATS["images_computed"],
                                "cache_hits": feature_cache.STATS["hits"],
                                "heads_fitted": feature_cache.STATS["heads_fitted"]}), flush=True)


def linked_cache(real: Path, tmp: Path) -> Path:
    """Return tmp/cache holding links to every entry of the real cache except its features folder."""
    cache = tmp / "cache"
    cache.mkdir()
    if real.is_dir():
        for entry in real.iterdir():
            if entry.name != "features":
                (cache / entry.name).symlink_to(entry.resolve())
    return cache


FITTED_KINDS = ("trained-head", "probe-predictions")  # what the tasks fit on cached features


def remove_fitted_heads(cache: Path) -> int:
    """Remove the fitted segmentation heads and linear probes (entries of FITTED_KINDS) from cache/features;
    return how many."""
    removed = 0
    for meta in (cache / "features").glob("*.json"):
        if json.loads(meta.read_text()).get("key_parts", {}).get("kind") in FITTED_KINDS:
            for path in (meta, meta.with_suffix(".npz"), meta.with_suffix(".npy")):
                path.unlink(missing_ok=True)
            removed += 1
    return removed


def run_cli(mode: str, cli_args: list[str], cache: Path) -> dict:
    """Return the timings of one CLI run in a fresh process under a cache mode (off/cold/features/warm)."""
    if mode == "features":
        remove_fitted_heads(cache)
    env = {**os.environ, "SILC_EVAL_CACHE": str(cache), "SILC_EVAL_FEATURE_CACHE": "off" if mode == "off" else "on"}
    proc = subprocess.run([sys.executable, __file__, "--child", *cli_args], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PERF ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{mode} run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][5:])


MODES = ("off", "cold", "features", "warm")


def measure_runs(label: str, cli_args: list[str], real_cache: Path, modes: tuple[str, ...] = MODES) -> None:
    """Print the timings of one CLI invocation in each cache mode (features and warm need cold before them)."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = linked_cache(real_cache, Path(tmp))
        results = {mode: run_cli(mode, cli_args + ["--output", f"{tmp}/out-{mode}"], cache) for mode in modes}
    print(f"\n(a) silc-eval run {label}")
    print(f"    {'mode':<8} {'wall s':>8} {'forward s':>10} {'forward %':>10} {'images encoded':>15} {'cache hits':>11} "
          f"{'heads fitted':>13}")
    for mode, r in results.items():
        print(f"    {mode:<8} {r['wall_s']:8.1f} {r['forward_s']:10.1f} {100 * r['forward_s'] / r['wall_s']:9.0f}% "
              f"{r['images_computed']:15d} {r['cache_hits']:11d} {r['heads_fitted']:13d}")
    for slower, why in (("off", "off"), ("features", "features (heads fitted again)")):
        if slower in results and "warm" in results:
            print(f"    warm vs {why}: {results[slower]['wall_s'] / results['warm']['wall_s']:.2f}x faster")


def measure_sweep(model_spec: str, repeats: int) -> None:
    """Print the probe sweep times on one model's cached SynthScenes features."""
    import statistics

    from silc_eval.evaluate.api import build_splits, dataset_root
    from silc_eval.features import encode_images
    from silc_eval.models import load_model
    from silc_eval.registry import resolve_benchmarks
    from silc_eval.tasks import linear_probe

    benchmark = resolve_benchmarks(["synthscenes-linear-probe"])[0]
    model = load_model(model_spec)
    splits = build_splits(benchmark, dataset_root(benchmark.dataset, None, None), model.preprocess)
    train, test = splits["train"], splits["eval"]
    x_tr = encode_images(model, train, progress=False, split="train")
    x_te = encode_images(model, test, progress=False, split="eval")
    import torch

    y_tr, y_te = torch.as_tensor(train.targets), torch.as_tensor(test.targets)
    base = {**linear_probe.TASK.default_params, "seeds": [0, 1, 2]}
    cases = {"logistic k-shot sweep (5 shots x 3 seeds)": {**base, "shots": [1, 2, 5, 10, 25]},
             "logistic full data (3 seeds)": {**base, "shots": ["full"]},
             "ridge k-shot sweep (4 shots x 3 seeds)": {**base, "protocol": "ridge", "shots": [1, 5, 10, 25]}}
    print(f"\n(b) probes on cached features of {model.name}: train {tuple(x_tr.shape)}, test {tuple(x_te.shape)}, "
          f"{torch.get_num_threads()} torch threads")
    for name, params in cases.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            metrics = linear_probe.probe_metrics(x_tr, y_tr, x_te, y_te, len(test.classes), params)
            times.append(time.perf_counter() - started)
        main = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.endswith("_mean"))
        print(f"    {name:<44s} median {statistics.median(times):6.2f} s   ({main})")


def main() -> None:
    """Parse arguments and print the measurements."""
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(["run", *sys.argv[2:]])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", default=None, help="suites to time (default: quick and all)")
    parser.add_argument("--model", action="append", default=[], help="models for the CLI runs (default: the zoo)")
    parser.add_argument("--probes", action="store_true", help="also time the two SynthScenes probe benchmarks")
    parser.add_argument("--sweep-model", default="clip-vit-tiny-synth", help="model for (b)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES),
                        help="cache modes to time, in order (default: all four; features and warm need cold first)")
    parser.add_argument("--skip-runs", action="store_true", help="only (b)")
    parser.add_argument("--skip-sweep", action="store_true", help="only (a)")
    args = parser.parse_args()
    from silc_eval.core.paths import cache_dir

    models = [a for m in args.model for a in ("--model", m)]
    if not args.skip_runs:
        runs = [(f"--suite {s}", ["--suite", s]) for s in (args.suite or ["quick", "all"])]
        if args.probes:
            runs.append((" ".join(f"--benchmark {b}" for b in PROBE_BENCHMARKS),
                         [a for b in PROBE_BENCHMARKS for a in ("--benchmark", b)]))
        for label, cli_args in runs:
            # generate SynthScenes in the real cache first (untimed), so no run pays for it
            subprocess.run([sys.executable, "-m", "silc_eval", "run", *cli_args, *models[:2], "--no-progress",
                            "--output", tempfile.mkdtemp()], env={**os.environ, "SILC_EVAL_FEATURE_CACHE": "off"},
                           capture_output=True) if not cache_dir().exists() else None
            modes = tuple(m for m in args.modes.split(",") if m)
            if not set(modes) <= set(MODES) or ({"features", "warm"} & set(modes) and "cold" not in modes):
                parser.error(f"--modes: expected some of {','.join(MODES)}, with cold before features and warm")
            measure_runs(label + (" " + " ".join(models) if models else " (every zoo model)"),
                         cli_args + models + ["--no-progress"], cache_dir(), modes)
    if not args.skip_sweep:
        measure_sweep(args.sweep_model, args.repeats)


if __name__ == "__main__":
    main()
