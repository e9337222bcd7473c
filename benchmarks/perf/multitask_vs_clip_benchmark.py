"""A multi-task suite end to end: one `silc-eval run` against CLIP_benchmark's own CLI, same data, same model.

The suite is zero-shot classification, image-text retrieval and a linear probe, on SynthScenes
and one model (default: the zoo's clip-vit-tiny-synth). Every run is a fresh subprocess and its
wall time includes interpreter and library start-up, model loading, data reading and writing
the results:

  silc-eval        `python -m silc_eval run --benchmark Z --benchmark R --benchmark P --model M`, once
                   with the feature cache off (`--no-feature-cache`, SILC_EVAL_FEATURE_CACHE=off) and
                   once with an empty cache (a new $SILC_EVAL_CACHE: cold; features computed by one
                   task may be read by the next within the run), into a new output folder;
  clip_benchmark   `clip_benchmark eval --task zeroshot_classification`, `--task zeroshot_retrieval`,
                   `--task linear_probe`: three processes (its CLI takes one task per call), its linear
                   probe with a new, empty --feature_root.

Runs are warmed up once (untimed: file cache, bytecode), then repeated --repeats times,
interleaved and alternating the order; the script prints medians and the ratios
silc-eval / clip_benchmark (the issue's target is <= 0.5), and the main metric of each task on
both sides, so that one can see the two did the same work.

Run from the repository root:  .venv/bin/python benchmarks/perf/multitask_vs_clip_benchmark.py
See benchmarks/perf/README.md. Nothing here is a test: it prints numbers, it asserts none.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_FLAG = "--clip-benchmark-cli"  # first argument of this script when it stands in for clip_benchmark's console script
ZEROSHOT, RETRIEVAL, PROBE = "synthscenes-zeroshot", "synthscenes-retrieval", "synthscenes-linear-probe"
MATCHED_PROBE = "synthscenes-linear-probe-full-seed0"  # PROBE with clip_benchmark's one run: full data, seed 0
CB_DATASET = "imagenet1k-unverified"  # clip_benchmark's plain ImageFolder type: <root>/val is its 'test' split


# ----------------------------------------------------------------------------- clip_benchmark's CLI, runnable here

def _numpy_safe_float(value=0.0):
    """Return float(value), taking the single element of a numpy array (numpy >= 2.4 refuses shape (1,))."""
    import builtins

    import numpy as np

    if isinstance(value, np.ndarray):
        return builtins.float(value.reshape(-1)[0])
    return builtins.float(value)


def _linear_probe_on_cpu(linear_probe) -> None:
    """Let clip_benchmark's linear probe run without CUDA; returns nothing.

    Its code asserts device == 'cuda', calls .cuda() and wraps models in DataParallel. Here
    .cuda() returns its object unchanged, DataParallel returns the module, tensors sent to
    'cuda' stay on the CPU, and evaluate() is told 'cuda'; every sampling, search and training
    step is still its own code.
    """
    import torch

    to = torch.Tensor.to

    def to_cpu(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        return to(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.nn.DataParallel = lambda module, device_ids=None: module
    torch.Tensor.to = to_cpu
    evaluate = linear_probe.evaluate
    linear_probe.evaluate = lambda *args, **kwargs: evaluate(*args, **{**kwargs, "device": "cuda"})


def clip_benchmark_cli(argv: list[str]) -> int:
    """Run clip_benchmark.cli.main() on argv after the two fixes it needs here; returns its exit code.

    clip-benchmark 1.6.2's accuracy() calls float() on a shape-(1,) array, which numpy 2.4 rejects:
    float is shadowed in its zeroshot_classification module only (the linear probe imports that
    accuracy()). Without a CUDA device its linear probe is made to run on the CPU (see above).
    """
    import torch
    from clip_benchmark import cli
    from clip_benchmark.metrics import linear_probe, zeroshot_classification

    zeroshot_classification.float = _numpy_safe_float
    if not torch.cuda.is_available():
        _linear_probe_on_cpu(linear_probe)
    sys.argv = ["clip_benchmark", *argv]
    return cli.main() or 0


# ----------------------------------------------------------------------------- inputs for both sides

def synthscenes_root() -> Path:
    """Return the folder holding synthscenes/ with the classification and retrieval parts (generated if missing)."""
    from silc_eval.producers.synthscenes import ensure_synthscenes

    return ensure_synthscenes(None, parts=("classification", "retrieval"), progress=False)


def write_benchmarks(folder: Path) -> Path:
    """Write a benchmarks folder ($SILC_EVAL_BENCHMARKS) with ZEROSHOT, RETRIEVAL and MATCHED_PROBE; returns it.

    MATCHED_PROBE is PROBE with shots [full] and seeds [0]: what one clip_benchmark linear_probe call does
    (weight decay searched on a 0.2 validation carve of train, then trained on train + validation).
    """
    import yaml

    definitions = REPO_ROOT / "benchmarks" / "definitions"
    (folder / "definitions").mkdir(parents=True)
    (folder / "suites").mkdir()
    for name in (ZEROSHOT, RETRIEVAL):
        (folder / "definitions" / f"{name}.yaml").write_text((definitions / f"{name}.yaml").read_text())
    probe = yaml.safe_load((definitions / f"{PROBE}.yaml").read_text())
    probe["name"] = MATCHED_PROBE
    probe["params"] = {**probe.get("params", {}), "shots": ["full"], "seeds": [0]}
    (folder / "definitions" / f"{MATCHED_PROBE}.yaml").write_text(yaml.safe_dump(probe, sort_keys=False))
    return folder


def write_clip_benchmark_inputs(data: Path, folder: Path) -> dict[str, Path]:
    """Write what clip_benchmark needs to read SynthScenes into folder; returns the paths by role.

    Classification is read in place (an ImageFolder: {train,val}/<class>/*.png); class names and
    templates become its --custom_classname_file / --custom_template_file JSON. Retrieval: the
    Karpathy JSON becomes a COCO captions JSON (images: id, file_name; annotations: image_id,
    caption) and <folder>/coco/val2014 links to the retrieval images, the layout of its
    'mscoco_captions' type (it reads any file name, so the PNGs are used unchanged).
    """
    classification = data / "synthscenes" / "classification"
    retrieval = data / "synthscenes" / "retrieval"
    classnames = classification.joinpath("classnames.txt").read_text().splitlines()
    templates = classification.joinpath("templates.txt").read_text().splitlines()
    paths = {"classification": classification, "classnames": folder / "classnames.json",
             "templates": folder / "templates.json", "coco": folder / "coco",
             "captions": folder / "coco" / "captions.json"}
    paths["classnames"].write_text(json.dumps({CB_DATASET: [c for c in classnames if c]}))
    paths["templates"].write_text(json.dumps({CB_DATASET: [t for t in templates if t]}))
    paths["coco"].mkdir()
    (paths["coco"] / "val2014").symlink_to((retrieval / "images").resolve())
    karpathy = json.loads((retrieval / "dataset_synthscenes.json").read_text())
    coco = {"images": [], "annotations": []}
    for entry in karpathy["images"]:
        coco["images"].append({"id": entry["imgid"], "file_name": entry["filename"]})
        coco["annotations"] += [{"id": s["sentid"], "image_id": entry["imgid"], "caption": s["raw"].strip()}
                                for s in entry["sentences"]]
    paths["captions"].write_text(json.dumps(coco))
    return paths


def clip_benchmark_model_args(spec: str) -> list[str]:
    """Return clip_benchmark's --model/--pretrained for a silc-eval model spec (zoo, local-dir: or ARCH:FILE)."""
    from silc_eval.models.loading import parse_model_spec

    parsed = parse_model_spec(spec)
    if parsed.kind == "checkpoint":
        return ["--model", parsed.architecture, "--pretrained", str(parsed.path.resolve())]
    folder = parsed.path.resolve()
    return ["--model", f"local-dir:{folder}", "--pretrained", str(folder)]  # open_clip ignores it for local-dir:


def clip_benchmark_commands(paths: dict[str, Path], model_args: list[str], protocols: dict, out: Path) -> list:
    """Return the three clip_benchmark argument lists (zero-shot, retrieval, linear probe) writing under out."""
    common = [*model_args, "--num_workers", "0", "--no_amp", "--quiet", "--seed", "0"]
    classification = ["--dataset", CB_DATASET, "--dataset_root", str(paths["classification"]), "--split", "test",
                      "--custom_classname_file", str(paths["classnames"]),
                      "--custom_template_file", str(paths["templates"])]
    probe = protocols[MATCHED_PROBE]
    return [
        ["eval", "--task", "zeroshot_classification", *classification, *common,
         "--batch_size", str(protocols[ZEROSHOT]["batch_size"]), "--output", str(out / "zeroshot.json")],
        ["eval", "--task", "zeroshot_retrieval", "--dataset", "mscoco_captions", "--dataset_root", str(paths["coco"]),
         "--split", "test", "--annotation_file", str(paths["captions"]), *common,
         "--recall_k", *[str(k) for k in protocols[RETRIEVAL]["recall_k"]],
         "--batch_size", str(protocols[RETRIEVAL]["batch_size"]), "--output", str(out / "retrieval.json")],
        ["eval", "--task", "linear_probe", *classification, "--train_split", "train",
         "--val_proportion", str(probe["val_proportion"]), "--fewshot_k", "-1", "--fewshot_lr", str(probe["lr"]),
         "--fewshot_epochs", str(probe["epochs"]), *common, "--batch_size", str(probe["batch_size"]),
         "--feature_root", str(out / "features"), "--output", str(out / "linear_probe.json")],
    ]


# ----------------------------------------------------------------------------- timed runs

def run_process(command: list[str], env: dict) -> float:
    """Return the wall seconds of one subprocess; a failure stops the script with its stderr tail."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds


def run_silc_eval(mode: str, args, data: Path, benchmarks: Path, scratch: Path) -> tuple[float, Path]:
    """Return (wall seconds, output folder) of one `silc-eval run` of the suite, cache 'off' or 'cold'."""
    work = Path(tempfile.mkdtemp(prefix=f"silc-{mode}-", dir=scratch))
    env = {**os.environ, "SILC_EVAL_CACHE": str(work / "cache"), "SILC_EVAL_BENCHMARKS": str(benchmarks),
           "SILC_EVAL_FEATURE_CACHE": "off" if mode == "off" else "on", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "silc_eval", "run", "--benchmark", ZEROSHOT, "--benchmark", RETRIEVAL,
               "--benchmark", MATCHED_PROBE, "--model", args.model, "--synthscenes-root", str(data),
               "--device", args.device, "--output", str(work / "out"), "--no-progress"]
    if mode == "off":
        command.append("--no-feature-cache")
    return run_process(command, env), work / "out"


def run_clip_benchmark(paths: dict[str, Path], model_args: list[str], protocols: dict, args,
                       scratch: Path) -> tuple[list[float], Path]:
    """Return (wall seconds of each of the three CLI processes, output folder), with a new feature root."""
    out = Path(tempfile.mkdtemp(prefix="clip-benchmark-", dir=scratch))
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if not args.device.startswith("cuda"):
        env["CUDA_VISIBLE_DEVICES"] = ""  # its CLI takes every visible GPU; --device cpu means none
    seconds = [run_process([sys.executable, __file__, CLI_FLAG, *command], env)
               for command in clip_benchmark_commands(paths, model_args, protocols, out)]
    return seconds, out


# ----------------------------------------------------------------------------- metrics read back

def silc_metrics(out: Path) -> dict[str, float]:
    """Return the main metrics of the three silc-eval records under out."""
    def metric(benchmark: str, name: str) -> float:
        (record,) = out.glob(f"records/*/{benchmark}.json")
        return json.loads(record.read_text())["metrics"][name]

    return {"zero-shot acc1": metric(ZEROSHOT, "acc1"),
            "retrieval image R@1": metric(RETRIEVAL, "image_retrieval_recall@1"),
            "retrieval text R@1": metric(RETRIEVAL, "text_retrieval_recall@1"),
            "linear probe acc1 (full)": metric(MATCHED_PROBE, "acc1_full_mean")}


def clip_benchmark_metrics(out: Path) -> dict[str, float]:
    """Return the same metrics from clip_benchmark's three result files under out."""
    def metric(name: str, key: str) -> float:
        return json.loads((out / f"{name}.json").read_text())["metrics"][key]

    return {"zero-shot acc1": metric("zeroshot", "acc1"),
            "retrieval image R@1": metric("retrieval", "image_retrieval_recall@1"),
            "retrieval text R@1": metric("retrieval", "text_retrieval_recall@1"),
            "linear probe acc1 (full)": metric("linear_probe", "lp_acc1")}


# ----------------------------------------------------------------------------- main

def measure(args, scratch: Path) -> int:
    """Prepare both sides' inputs, run the interleaved repeats and print the table; returns 0."""
    from silc_eval.registry import resolve_benchmarks

    data = synthscenes_root()
    benchmarks = write_benchmarks(scratch / "benchmarks")
    protocols = {b.name: b.protocol() for b in resolve_benchmarks([ZEROSHOT, RETRIEVAL, MATCHED_PROBE], benchmarks)}
    paths = write_clip_benchmark_inputs(data, scratch)
    model_args = clip_benchmark_model_args(args.model)

    print(f"model      {args.model}; device {args.device}; SynthScenes under {data}")
    print(f"suite      {ZEROSHOT} (batch {protocols[ZEROSHOT]['batch_size']}), {RETRIEVAL} (recall@"
          f"{protocols[RETRIEVAL]['recall_k']}, batch {protocols[RETRIEVAL]['batch_size']}), {MATCHED_PROBE} "
          f"(logistic, full data, seed 0, weight-decay search on a {protocols[MATCHED_PROBE]['val_proportion']} "
          f"carve, probe batch {protocols[MATCHED_PROBE]['batch_size']})")
    print(f"machine    {os.cpu_count()} CPUs; {args.repeats} repeats after {args.warmup} untimed warm-up round(s)")

    sides = {"off": lambda: run_silc_eval("off", args, data, benchmarks, scratch),
             "cold": lambda: run_silc_eval("cold", args, data, benchmarks, scratch),
             "clip_benchmark": lambda: run_clip_benchmark(paths, model_args, protocols, args, scratch)}
    seconds = {name: [] for name in sides}
    per_task: list[list[float]] = []
    outputs = {}
    for round_index in range(args.warmup + args.repeats):
        order = list(sides.items()) if round_index % 2 == 0 else list(sides.items())[::-1]
        for name, fn in order:
            value, outputs[name] = fn()
            if round_index < args.warmup:
                continue
            if name == "clip_benchmark":
                per_task.append(value)
                value = sum(value)
            seconds[name].append(value)

    median = {name: statistics.median(values) for name, values in seconds.items()}
    tasks = [statistics.median(column) for column in zip(*per_task)]
    print(f"\nwall time, median of {args.repeats} (min, max):")
    labels = {"off": "silc-eval run, feature cache off", "cold": "silc-eval run, feature cache cold",
              "clip_benchmark": "clip_benchmark CLI x 3 tasks"}
    for name, label in labels.items():
        print(f"  {label:<36s} {median[name]:7.1f} s  ({min(seconds[name]):.1f}, {max(seconds[name]):.1f})")
    print(f"    clip_benchmark per task: zero-shot {tasks[0]:.1f} s, retrieval {tasks[1]:.1f} s, "
          f"linear probe {tasks[2]:.1f} s")
    for mode in ("off", "cold"):
        target = "   (target <= 0.5)" if mode == "off" else ""
        print(f"  silc-eval / clip_benchmark, cache {mode:<4s} = {median[mode] / median['clip_benchmark']:.3f}{target}")

    ours, theirs = silc_metrics(outputs["off"]), clip_benchmark_metrics(outputs["clip_benchmark"])
    print("\nmain metrics of the last runs (silc-eval | clip_benchmark):")
    for key in ours:
        print(f"  {key:<26s} {ours[key]:.4f} | {theirs[key]:.4f}")
    return 0


def main(argv=None) -> int:
    """Parse arguments (or act as clip_benchmark's console script) and measure; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CLI_FLAG]:
        return clip_benchmark_cli(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="clip-vit-tiny-synth",
                        help="zoo name, local-dir:FOLDER or ARCH:CHECKPOINT (default: clip-vit-tiny-synth)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    sys.path.insert(0, str(REPO_ROOT))
    with tempfile.TemporaryDirectory(prefix="silc-multitask-") as scratch:
        return measure(args, Path(scratch))


if __name__ == "__main__":
    sys.exit(main())
