"""Zero-shot classification throughput: silc_eval vs clip_benchmark vs the bare image tower.

On one model and one benchmark dataset, in one process, measures images/s of
  (a) the zeroshot_classification task's evaluate (classifier + image loading + metrics), with the
      feature cache switched off so every run encodes every image,
  (b) clip_benchmark.metrics.zeroshot_classification.evaluate over a DataLoader of the same dataset,
  (c) model.model.encode_image alone on pre-loaded, pre-transformed tensors (the upper limit),
  (+) the input pipeline alone (DataLoader: PNG decode + transform + collate, no model),
then prints medians over --repeats and the ratios ours/clip_benchmark and ours/bare; and
  (d) the wall time of `silc-eval run --suite S` in a subprocess for each S in --suites.

Run from the repository root:  .venv/bin/python benchmarks/perf/zeroshot_throughput.py
See benchmarks/perf/README.md.
"""

from __future__ import annotations

import argparse
import builtins
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# clip_benchmark draws tqdm bars unconditionally; silence them (ours are off via progress=False).
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Same architecture as the tests' tiny checkpoint (tests/conftest.py).
TINY_MODEL_SECTION = {
    "embed_dim": 32,
    "vision": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text": {"context_length": 16, "width": 32, "heads": 2, "layers": 2},
}


def build_tiny_random_model(folder: Path, seed: int = 0) -> str:
    """Write a tiny random open_clip local-dir checkpoint over the SynthScenes vocabulary; returns its spec."""
    from silc_eval.producers.synthscenes import vocabulary
    from silc_eval.train.model_config import create_model, open_clip_config, save_local_dir
    from silc_eval.train.tokenizer import save_word_tokenizer

    vocab_size = save_word_tokenizer(vocabulary(), folder)
    config = open_clip_config(TINY_MODEL_SECTION, vocab_size, (0.5,) * 3, (0.5,) * 3)
    torch.manual_seed(seed)
    save_local_dir(create_model(config), config, folder)
    return f"local-dir:{folder}"


def default_model_spec(scratch: Path) -> str:
    """Return the first zoo model's name, or build a tiny random model when the zoo is empty."""
    from silc_eval.models.zoo import list_zoo

    entries = list_zoo()
    if entries:
        return entries[0].name
    return build_tiny_random_model(scratch / "tiny-random-model")


def _numpy_safe_float(value=0.0):
    if isinstance(value, np.ndarray):
        return builtins.float(value.reshape(-1)[0])
    return builtins.float(value)


def clip_benchmark_classification():
    """Return clip_benchmark's zeroshot_classification module, patched to run with numpy >= 2.4.

    clip-benchmark 1.6.2's accuracy() calls float() on a shape-(1,) array, which numpy 2.4 rejects;
    shadowing float in that module only (taking the single element) leaves its algorithm untouched.
    """
    from clip_benchmark.metrics import zeroshot_classification

    zeroshot_classification.float = _numpy_safe_float
    return zeroshot_classification


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """Return (result, seconds) of fn(), synchronising CUDA around it."""
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


def run_ours(model, dataset, params):
    """Return the metrics of the zeroshot_classification task on dataset, the feature cache switched off.

    With the cache on, every run after the first would read the image features from disk and
    (a) would time cache hits instead of the image tower.
    """
    from silc_eval.features.cache import switched_off
    from silc_eval.tasks import TASKS

    with switched_off():
        return TASKS["zeroshot_classification"].evaluate(model, {"eval": dataset}, params, progress=False).metrics


def run_clip_benchmark(cb, model, dataset, params):
    loader = DataLoader(dataset, batch_size=params["batch_size"], shuffle=False, num_workers=params["num_workers"],
                        pin_memory=model.device.type == "cuda")
    return cb.evaluate(model.model, loader, model.tokenizer, dataset.classes, dataset.templates,
                       model.device.type, amp=params["amp"])


def preload(dataset) -> torch.Tensor:
    """Return every transformed image of dataset stacked into one CPU tensor (not timed)."""
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def run_bare(model, images: torch.Tensor, batch_size: int, amp: bool):
    from silc_eval.features import autocast_context

    with torch.inference_mode(), autocast_context(model.device, amp):
        for start in range(0, len(images), batch_size):
            model.model.encode_image(images[start:start + batch_size].to(model.device, non_blocking=True))


def run_pipeline_only(dataset, params, device: torch.device):
    loader = DataLoader(dataset, batch_size=params["batch_size"], shuffle=False, num_workers=params["num_workers"],
                        pin_memory=device.type == "cuda")
    for images, _ in loader:
        images.to(device, non_blocking=True)


def run_cli_suite(suite: str, model_spec: str, device: str, output: Path) -> tuple[float, int, str]:
    """Return (wall seconds, exit code, last stderr line) of `python -m silc_eval run --suite suite`."""
    command = [sys.executable, "-m", "silc_eval", "run", "--suite", suite, "--model", model_spec,
               "--device", device, "--output", str(output), "--no-progress"]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    tail = (completed.stderr.strip().splitlines() or [""])[-1]
    return seconds, completed.returncode, tail


def fmt_rate(values: list[float]) -> str:
    return f"{statistics.median(values):10.1f} img/s  (min {min(values):.1f}, max {max(values):.1f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="model spec (zoo name, ARCH:CHECKPOINT, local-dir:FOLDER); default: the first zoo "
                             "model, or a tiny random model when the zoo is empty")
    parser.add_argument("--benchmark", default="synthscenes-zeroshot",
                        help="a zeroshot_classification benchmark name (default: synthscenes-zeroshot)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each measurement (default: 5)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the benchmark's batch_size")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--data-root", type=Path, default=None, help="data root for real-data benchmarks")
    parser.add_argument("--synthscenes-root", type=Path, default=None, help="folder holding synthscenes/")
    parser.add_argument("--suites", default="quick,all",
                        help="comma-separated suites to time end to end with `silc-eval run` ('' to skip; "
                             "default: quick,all)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    with tempfile.TemporaryDirectory(prefix="silc-perf-") as scratch:
        return measure(args, parser, Path(scratch))


def measure(args, parser, scratch: Path) -> int:
    from silc_eval.evaluate.api import build_splits, dataset_root
    from silc_eval.models import load_model
    from silc_eval.registry import resolve_benchmarks

    model_spec = args.model or default_model_spec(scratch)
    (benchmark,) = resolve_benchmarks([args.benchmark])
    if benchmark.task != "zeroshot_classification":
        parser.error(f"{benchmark.name} is a {benchmark.task} benchmark; expected zeroshot_classification")
    params = benchmark.protocol()
    if args.batch_size:
        params["batch_size"] = args.batch_size

    model = load_model(model_spec, device=args.device)
    device = model.device
    root = dataset_root(benchmark.dataset, args.data_root, args.synthscenes_root)
    dataset = build_splits(benchmark, root, model.preprocess)["eval"]
    cb = clip_benchmark_classification()
    n = len(dataset)

    print(f"model      {model_spec}  ({model.architecture}, "
          f"{sum(p.numel() for p in model.model.parameters()) / 1e6:.2f} M params)")
    print(f"benchmark  {benchmark.name}: {n} images, {len(dataset.classes)} classes, "
          f"{len(dataset.templates)} templates; batch_size {params['batch_size']}, "
          f"num_workers {params['num_workers']}, amp {params['amp']}")
    print(f"machine    {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {device}")

    images = preload(dataset)
    # Warm-up (not timed): first calls pay for lazy initialisation and allocator growth.
    ours_metrics = run_ours(model, dataset, params)
    cb_metrics = run_clip_benchmark(cb, model, dataset, params)
    run_bare(model, images, params["batch_size"], params["amp"])

    rates = {"ours": [], "clip_benchmark": [], "bare": [], "pipeline": []}
    for _ in range(args.repeats):  # interleaved, so slow drift affects every measurement alike
        _, seconds = timed(lambda: run_ours(model, dataset, params), device)
        rates["ours"].append(n / seconds)
        _, seconds = timed(lambda: run_clip_benchmark(cb, model, dataset, params), device)
        rates["clip_benchmark"].append(n / seconds)
        _, seconds = timed(lambda: run_bare(model, images, params["batch_size"], params["amp"]), device)
        rates["bare"].append(n / seconds)
        _, seconds = timed(lambda: run_pipeline_only(dataset, params, device), device)
        rates["pipeline"].append(n / seconds)

    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\nthroughput, median of {args.repeats} repeats:")
    print(f"  (a) silc_eval evaluate        {fmt_rate(rates['ours'])}")
    print(f"  (b) clip_benchmark evaluate   {fmt_rate(rates['clip_benchmark'])}")
    print(f"  (c) bare encode_image         {fmt_rate(rates['bare'])}")
    print(f"      input pipeline only       {fmt_rate(rates['pipeline'])}")
    print(f"  ours / clip_benchmark = {median['ours'] / median['clip_benchmark']:.3f}")
    print(f"  ours / bare           = {median['ours'] / median['bare']:.3f}")
    same = all(abs(ours_metrics[k] - cb_metrics[k]) <= 1e-6 or (ours_metrics[k] != ours_metrics[k]
                                                               and cb_metrics[k] != cb_metrics[k])
               for k in ("acc1", "acc5", "mean_per_class_recall"))
    print("  metrics  ours " + ", ".join(f"{k}={ours_metrics[k]:.4f}" for k in ("acc1", "acc5", "mean_per_class_recall"))
          + f"  | clip_benchmark {'identical (1e-6)' if same else 'DIFFERENT: ' + str(cb_metrics)}")

    suites = [s for s in args.suites.split(",") if s.strip()]
    if suites:
        print("\nend to end (`python -m silc_eval run --suite S`, one run each, includes process start-up,"
              " model load, data generation if missing, and report writing):")
    for suite in suites:
        seconds, code, tail = run_cli_suite(suite.strip(), model_spec, args.device, scratch / f"run-{suite.strip()}")
        status = "ok" if code == 0 else f"FAILED (exit {code}): {tail}"
        print(f"  (d) --suite {suite.strip():<8s} {seconds:8.1f} s  {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
