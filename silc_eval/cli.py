"""Command-line interface: parsing only; the work is done by runner, registry, data and train."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from silc_eval import __version__
from silc_eval.core.errors import Stopped, UserError, unwrap_worker_error

EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit code 2."""

    def error(self, message: str):
        raise UserError(f"{message} (see '{self.prog} --help')")


def positive_int(text: str) -> int:
    """Return text as a whole number >= 1 (an argparse type; anything else is a one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def add_interval_options(parser: argparse.ArgumentParser, metrics: bool = True) -> None:
    """Add the bootstrap options (resamples, level, seed and, if asked, extra interval metrics) to a subcommand."""
    parser.add_argument("--resamples", type=int, default=1000, metavar="N",
                        help="bootstrap resamples of the images for intervals and paired tests (default 1000; "
                             "0: none)")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, metavar="SEED",
                        help="seed of the resampling (default 0)")
    if metrics:
        parser.add_argument("--interval-metrics", action="append", default=[], metavar="GLOB[,GLOB...]",
                            help="metrics that get an interval besides each benchmark's main metric "
                                 "(globs, e.g. 'acc5,IoU.*'; 'all' for every metric)")


def interval_settings(args):
    """Return the IntervalSettings of parsed bootstrap options."""
    from silc_eval.report.intervals import IntervalSettings, parse_metric_globs

    return IntervalSettings(resamples=args.resamples, level=args.level, seed=args.bootstrap_seed,
                            metrics=parse_metric_globs(getattr(args, "interval_metrics", [])))


def build_parser() -> argparse.ArgumentParser:
    """Return the silc-eval argument parser with its subcommands."""
    parser = OneLineParser(prog="silc-eval", description="Zero-shot evaluation and training for CLIP-style models.")
    parser.add_argument("--version", action="version", version=f"silc-eval {__version__}")
    parser.add_argument("--extra-benchmarks", action="append", default=[], type=Path, metavar="DIR",
                        help="a folder with definitions/ and/or suites/ that add to the built-in benchmarks "
                             "(repeatable; before the command, e.g. silc-eval --extra-benchmarks mine run ...)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = sub.add_parser("run", help="evaluate models on a suite and write records and a leaderboard")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--suite", default=None, help="suite name (default: all)")
    which.add_argument("--benchmark", action="append", default=[], help="a benchmark name (repeatable)")
    run.add_argument("--model", action="append", default=[],
                     help="zoo name, ARCH:CHECKPOINT or local-dir:FOLDER (repeatable; default: every zoo model)")
    run.add_argument("--data-root", type=Path, default=None, help="folder holding real datasets")
    run.add_argument("--synthscenes-root", type=Path, default=None,
                     help="folder holding synthscenes/ (default: generated once into the cache)")
    run.add_argument("--synthscenes-seed", type=int, default=None,
                     help="evaluate the SynthScenes benchmarks on the world of this seed: same classes and vocabulary, "
                          "other scenes (a validation world for tuning recipes; the benchmarks' own is seed 0)")
    run.add_argument("--output", type=Path, default=Path("runs/latest"), help="output folder (default: runs/latest)")
    run.add_argument("--device", default="cpu",
                     help="cpu or cuda[:N] (default: cpu; under torchrun, cuda is each rank's local GPU)")
    run.add_argument("--precision", default="fp32", choices=("fp32", "fp16"),
                     help="fp16: open_clip towers in half precision as OpenAI CLIP's reference code runs them "
                          "(float16 weights, LayerNorm in float32; a GPU's path, slow on a CPU); default fp32")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-feature-cache", action="store_true",
                     help="compute every image feature afresh (default: reuse the feature cache)")
    run.add_argument("--limit", type=positive_int, default=None, metavar="N",
                     help="a smoke run on the first N samples of every split; its records say so and are never "
                          "kept as full results")
    run.add_argument("--force", action="store_true",
                     help="recompute every record (default: keep records whose inputs are unchanged)")

    check = sub.add_parser("check", help="compare a run's records with reference scores; exit 1 on a regression")
    check.add_argument("results", type=Path, metavar="RESULTS_DIR", help="a 'silc-eval run' output folder")
    source = check.add_mutually_exclusive_group()
    source.add_argument("--reference", type=Path, default=None, metavar="FILE",
                        help="CSV or YAML of reference scores (default: the zoo cards' reference_scores)")
    source.add_argument("--published", action="store_true", help="compare with model_zoo/published.yaml")
    source.add_argument("--reference-run", type=Path, default=None, metavar="DIR",
                        help="a results folder with sidecars: a regression is a paired difference whose "
                             "bootstrap interval lies entirely below minus the tolerance")
    check.add_argument("--tolerance", action="append", default=[], metavar="[[SCOPE:]METRIC=]VALUE",
                       help="allowed drop, a fraction or pp (default 0.003 = 0.3pp); METRIC and SCOPE "
                            "(benchmark, task or group) are globs; repeatable, the last match wins")
    check.add_argument("--match", action="append", default=[], metavar="RECORD_MODEL=REFERENCE_MODEL",
                       help="compare a record model with a reference of another name, e.g. a published "
                            "'method (backbone)' (repeatable)")
    check.add_argument("--strict", action="store_true",
                       help="fail on a malformed or foreign record file (default: name it and skip it)")
    add_interval_options(check, metrics=False)

    report = sub.add_parser("report", help="write grouped tables and report.html from a results folder's records")
    report.add_argument("results", type=Path, metavar="RESULTS_DIR", help="a folder written by 'silc-eval run'")
    report.add_argument("--baseline", default=None, metavar="MODEL",
                        help="show every score's difference to this model, in percentage points")
    report.add_argument("--format", default="md,csv,html", help="comma-separated subset of md,csv,html (default: all)")
    report.add_argument("--with-published", action="store_true",
                        help="add published numbers (model_zoo/published.yaml) as marked rows")
    report.add_argument("--published", type=Path, default=None, metavar="FILE",
                        help="another published-numbers YAML (implies --with-published)")
    report.add_argument("--strict", action="store_true",
                        help="fail on a malformed or foreign JSON under records/ instead of skipping it")
    add_interval_options(report)

    compare = sub.add_parser("compare", help="paired differences of two results folders (RUN_B minus RUN_A)")
    compare.add_argument("run_a", type=Path, metavar="RUN_A", help="the results folder before (the reference)")
    compare.add_argument("run_b", type=Path, metavar="RUN_B", help="the results folder after")
    compare.add_argument("--csv", type=Path, default=None, metavar="FILE", help="also write the table as CSV")
    compare.add_argument("--strict", action="store_true",
                         help="fail on a malformed or foreign JSON under records/ instead of skipping it")
    add_interval_options(compare)

    lister = sub.add_parser("list", help="list benchmarks, suites or models")
    lister.add_argument("what", choices=["benchmarks", "suites", "models", "recipes"])
    lister.add_argument("--model", action="append", default=[],
                        help="with `models`: describe this model spec (as `run --model` takes it) instead of the zoo: "
                             "family, architecture, sha256 and the preprocessing it records (repeatable)")

    data = sub.add_parser("data", help="write datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=OneLineParser)
    synth = data_sub.add_parser("synthscenes", help="write the SynthScenes world to a folder")
    synth.add_argument("--out", type=Path, required=True, help="destination folder (synthscenes/ is created in it)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--n-train", type=int, default=None, help="number of training pairs")
    synth.add_argument("--parts", default=None, help="comma-separated parts (default: all)")
    synth.add_argument("--workers", type=int, default=None, help="rendering processes (default: the usable CPUs)")
    prepare = data_sub.add_parser("prepare", help="derive label maps from a dataset's own annotations")
    prepare_sub = prepare.add_subparsers(dest="prepare_command", required=True, parser_class=OneLineParser)
    coco_object = prepare_sub.add_parser(
        "coco-object", help="render COCO instances to <stem>_instanceTrainIds.png (things 1..80, else 0)")
    coco_object.add_argument("--coco", type=Path, required=True,
                             help="COCO folder holding annotations/instances_<split>.json")
    coco_object.add_argument("--out", type=Path, required=True,
                             help="destination folder, e.g. DATA_ROOT/coco_stuff164k/annotations/val2017")
    coco_object.add_argument("--split", default="val2017", help="COCO split (default: val2017)")
    ade847 = prepare_sub.add_parser(
        "ade847", help="ADE20K-full validation images and 16-bit label maps of the 847 classes (SAN / CAT-Seg layout)")
    ade847.add_argument("--ade20k", type=Path, required=True,
                        help="the ADE20K_2021_17_01 folder (images/ADE/validation/.../ADE_val_*.jpg and *_seg.png)")
    ade847.add_argument("--out", type=Path, default=None,
                        help="destination of images_detectron2/ and annotations_detectron2/ (default: --ade20k, "
                             "i.e. DATA_ROOT/ADE20K_2021_17_01)")
    pc459 = prepare_sub.add_parser(
        "pc459", help="Pascal Context-459 16-bit label maps from trainval/<id>.mat (SAN / CAT-Seg layout)")
    pc459.add_argument("--voc2010", type=Path, required=True,
                       help="the VOCdevkit/VOC2010 folder holding trainval/<id>.mat (Pascal Context's trainval.tar.gz)")
    pc459.add_argument("--split-file", type=Path, default=None,
                       help="image ids to convert (default: VOC2010/ImageSets/SegmentationContext/val.txt)")
    pc459.add_argument("--out", type=Path, default=None,
                       help="destination folder (default: VOC2010/annotations_detectron2/pc459_val)")

    train = sub.add_parser("train", help="train a recipe into an open_clip local-dir checkpoint with a card")
    train.add_argument("--recipe", required=True, help="recipe name (model_zoo/recipes) or YAML path")
    train.add_argument("--output", type=Path, default=None, help="checkpoint folder (default: runs/train/<recipe>)")
    train.add_argument("--steps", type=int, default=None, help="override optim.steps")
    train.add_argument("--epochs", type=int, default=None, help="override optim.epochs")
    train.add_argument("--batch-size", type=int, default=None, help="override optim.batch_size")
    train.add_argument("--n-train", type=int, default=None, help="override data.n_train (SynthScenes pairs)")
    train.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each rank its local GPU)")
    train.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    train.add_argument("--restart", action="store_true", help="discard an unfinished run's state instead of resuming")
    train.add_argument("--keep-state", action="store_true", help="keep the resumable state after finishing")
    train.add_argument("--no-eval", action="store_true", help="skip the reference-score evaluation")

    study = sub.add_parser("study", help="train, evaluate and report a study (recipes x budgets x seeds); resumes")
    study.add_argument("study", type=Path, help="study YAML (e.g. benchmarks/studies/zoo_recipes.yaml)")
    study.add_argument("--output", type=Path, required=True, help="study folder (models, results, report.md)")
    study.add_argument("--device", default="cpu", help="cpu or cuda")
    study.add_argument("--train-only", action="store_true", help="train the runs, evaluate and report nothing")
    study.add_argument("--report-only", action="store_true", help="rewrite the report from the records")
    study.add_argument("--no-progress", action="store_true", help="no progress bars or step logs")

    cache = sub.add_parser("cache", help="show what the feature cache holds; with an option, prune it")
    cache.add_argument("--max-gb", type=float, default=None,
                       help="remove the least recently used entries until the feature cache fits in this many GB")
    cache.add_argument("--unused-days", type=float, default=None,
                       help="remove entries not used for more than this many days")
    cache.add_argument("--model-sha256", action="append", default=[], metavar="HEX",
                       help="remove the entries of the model whose weights sha256 starts with HEX (repeatable)")
    cache.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    return parser


def cmd_run(args) -> int:
    from silc_eval.core import distributed
    from silc_eval.evaluate.runner import RunConfig, run
    from silc_eval.features.cache import switched_off
    from silc_eval.registry import resolve_benchmarks, resolve_suite

    benchmarks = resolve_benchmarks(args.benchmark) if args.benchmark else resolve_suite(args.suite or "all")
    distributed.check_device(args.device)
    # Under torchrun: shard the work over the ranks; only rank 0 writes and prints.
    with distributed.session(args.device) as device, switched_off(args.no_feature_cache):
        main = distributed.is_main()
        run(RunConfig(benchmarks=benchmarks, models=args.model, output=args.output, data_root=args.data_root,
                      synthscenes_root=args.synthscenes_root, synthscenes_seed=args.synthscenes_seed, device=device,
                      progress=not args.no_progress and main, force=args.force,
                      limit=args.limit, precision=args.precision))
    if not main:
        return 0
    print(f"wrote {args.output}/leaderboard.md, leaderboard.csv, results.csv and records/")
    print((args.output / "leaderboard.md").read_text())
    return 0


def cmd_check(args) -> int:
    from silc_eval.report.check import run_check

    outcome = run_check(args.results, reference=args.reference, published=args.published,
                        tolerances=args.tolerance, matches=args.match, strict=args.strict,
                        reference_run=args.reference_run, intervals=interval_settings(args))
    print(outcome.text)
    return outcome.exit_code


def cmd_report(args) -> int:
    from silc_eval.report.published import load_published
    from silc_eval.report.write import parse_formats, write_reports

    formats = parse_formats(args.format)
    published = load_published(args.published) if (args.with_published or args.published) else ()
    written = write_reports(args.results, baseline=args.baseline, formats=formats, published=published,
                            strict=args.strict, intervals=interval_settings(args))
    print(f"wrote {', '.join(str(path) for path in written.values())}")
    return 0


def cmd_compare(args) -> int:
    from silc_eval.report.paired import compare_runs

    print(compare_runs(args.run_a, args.run_b, interval_settings(args), csv=args.csv, strict=args.strict).text)
    return 0


def cmd_list(args) -> int:
    if args.what == "benchmarks":
        from silc_eval.core.log import warn
        from silc_eval.registry import load_benchmarks

        for b in load_benchmarks(on_error=lambda exc: warn(f"{exc} (left out)")).values():
            each = f"  (one per language, {b.name}-<language>: {len(b.languages)})" if b.languages else ""
            print(f"{b.name:<32s} {b.task:<26s} {b.dataset['source']:<12s} {b.main_metric}{each}")
    elif args.what == "suites":
        from silc_eval.core.log import warn
        from silc_eval.registry import load_suites

        for s in load_suites(on_error=lambda exc: warn(f"{exc} (left out)")).values():
            print(f"{s.name:<16s} {', '.join(s.benchmarks)}")
    elif args.what == "models" and args.model:
        import json

        from silc_eval.evaluate.records import model_entry
        from silc_eval.models import load_model

        for spec in args.model:
            entry = model_entry(load_model(spec))
            print(f"{entry['name']:<28s} family={entry['family']} architecture={entry['architecture']} "
                  f"sha256={entry['sha256'][:12]}")
            if "preprocessing" in entry:
                print(f"  preprocessing {json.dumps(entry['preprocessing'], sort_keys=True)}")
                print(f"  logit_scale {json.dumps(entry['logit_scale'], sort_keys=True)}")
    elif args.what == "models":
        from silc_eval.models.zoo import list_zoo

        for entry in list_zoo():
            training, compute = entry.card.get("training", {}), entry.card.get("compute", {})
            flops = compute.get("training_flops")
            print(f"{entry.name:<28s} family=open_clip recipe={training.get('recipe', '?'):<11s} "
                  f"images_seen={compute.get('images_seen', '?'):<8} "
                  f"flops={flops if flops is None else format(flops, '.3g'):<9} "
                  f"sha256={entry.card.get('weights', {}).get('sha256', '?')[:12]}")
    else:
        from silc_eval.train.recipe import available_recipes

        print("\n".join(available_recipes()))
    return 0


def prepare_data(args) -> int:
    """Run one `silc-eval data prepare` converter (silc_eval/producers/) and print what it wrote."""
    from silc_eval.core.io import check_writable_folder

    progress = sys.stderr.isatty()
    if args.prepare_command == "coco-object":
        from silc_eval.producers.coco_object import SUFFIX, prepare_coco_object

        check_writable_folder(args.out, "--out")
        count = prepare_coco_object(args.coco, args.out, split=args.split, progress=progress)
        print(f"wrote {count} COCO-Object label maps (*{SUFFIX}) to {args.out}")
    elif args.prepare_command == "ade847":
        from silc_eval.producers.ade847 import ANNOTATIONS, IMAGES, prepare_ade847

        out = args.out if args.out is not None else args.ade20k
        check_writable_folder(out, "--out")
        count = prepare_ade847(args.ade20k, out, progress=progress)
        print(f"wrote {count} ADE-847 validation images and label maps to {out / IMAGES} and {out / ANNOTATIONS}")
    else:
        from silc_eval.producers.pc459 import DEFAULT_OUT, prepare_pc459

        out = args.out if args.out is not None else args.voc2010 / DEFAULT_OUT
        check_writable_folder(out, "--out")
        count = prepare_pc459(args.voc2010, out, split_file=args.split_file, progress=progress)
        print(f"wrote {count} Pascal Context-459 label maps (*.tif) to {out}")
    return 0


def cmd_data(args) -> int:
    from silc_eval.core.io import check_writable_folder

    if args.data_command == "prepare":
        return prepare_data(args)
    from silc_eval.producers.synthscenes import PARTS, SynthScenesConfig, default_workers, write_synthscenes

    parts = tuple(args.parts.split(",")) if args.parts else PARTS
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"unknown SynthScenes part '{unknown[0]}'; expected some of {', '.join(PARTS)}")
    check_writable_folder(args.out, "--out")
    config = SynthScenesConfig(seed=args.seed, **({"n_train": args.n_train} if args.n_train else {}))
    out = write_synthscenes(args.out, config=config, parts=parts, workers=args.workers or default_workers())
    print(f"wrote SynthScenes ({', '.join(parts)}) to {out / 'synthscenes'}")
    return 0


def cmd_train(args) -> int:
    from silc_eval.core.distributed import check_device
    from silc_eval.train.loop import train
    from silc_eval.train.recipe import load_recipe

    check_device(args.device)
    recipe = load_recipe(args.recipe, {"steps": args.steps, "epochs": args.epochs, "batch_size": args.batch_size,
                                       "n_train": args.n_train})
    output = args.output or Path("runs/train") / recipe["name"]
    card = train(recipe, output, device=args.device, evaluate=not args.no_eval, restart=args.restart,
                 keep_state=args.keep_state, amp=args.amp)
    if card is not None:
        compute = card["compute"]
        print(f"wrote {output} ({card['training']['steps']} steps, {compute['images_seen']} images, "
              f"{compute['training_flops']:.3g} FLOPs, {compute['wall_time_s']} s)")
    return 0


def cmd_study(args) -> int:
    from silc_eval.core.distributed import check_device
    from silc_eval.report.study_report import write_study_report
    from silc_eval.train.study import run_study

    check_device(args.device)
    if args.report_only:
        written = write_study_report(args.output)
    else:
        written = run_study(args.study, args.output, args.device, not args.no_progress, args.train_only)
    print(f"wrote {written}")
    return 0


def _size(n_bytes: float) -> str:
    if n_bytes < 1000:
        return f"{n_bytes:.0f} B"
    for unit in ("KB", "MB"):
        n_bytes /= 1000
        if n_bytes < 1000:
            return f"{n_bytes:.1f} {unit}"
    return f"{n_bytes / 1000:.1f} GB"


def cmd_cache(args) -> int:
    import re
    import time

    from silc_eval.core.paths import cache_dir
    from silc_eval.features import housekeeping

    for option, value in (("--max-gb", args.max_gb), ("--unused-days", args.unused_days)):
        if value is not None and not value >= 0:
            raise UserError(f"{option} {value:g}: expected a number >= 0")
    for prefix in args.model_sha256:
        if not re.fullmatch(r"[0-9a-fA-F]{4,64}", prefix):
            raise UserError(f"--model-sha256 {prefix}: expected 4 to 64 hex digits of a weights sha256")
    inventory = housekeeping.take_inventory()
    now = time.time()
    print(f"feature cache {housekeeping.features_dir()}: {len(inventory.entries)} entries, {_size(inventory.bytes)}")
    for row in housekeeping.summary(inventory):
        days = [(now - row[k]) / 86400 for k in ("newest_use", "oldest_use")]
        print(f"  {row['kind']:<17s} {row['entries']:6d} entries {_size(row['bytes']):>10s}   last used "
              f"{days[0]:.1f} to {days[1]:.1f} days ago")
    others = [p for p in sorted(cache_dir().glob("*")) if p.is_dir() and p.name != "features"]
    for folder in others:
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"  {folder.name + '/':<42s} {_size(size):>10s}   (not pruned here)")
    pruning = args.max_gb is not None or args.unused_days is not None or args.model_sha256
    leftovers = housekeeping.stale_leftovers(inventory)
    if not pruning and not leftovers:
        return 0
    max_bytes = None if args.max_gb is None else int(args.max_gb * 1e9)
    chosen = housekeeping.select_for_pruning(inventory, max_bytes, args.unused_days,
                                             [m.lower() for m in args.model_sha256], now)
    chosen_bytes = sum(e.bytes for e in chosen) + sum(p.stat().st_size for p in leftovers if p.exists())
    if args.dry_run:
        print(f"would remove {len(chosen)} entries and {len(leftovers)} leftover files of killed runs "
              f"({_size(chosen_bytes)}); nothing removed (--dry-run)")
        return 0
    freed = housekeeping.remove(chosen, leftovers)
    print(f"removed {len(chosen)} entries and {len(leftovers)} leftover files of killed runs ({_size(freed)}); "
          f"{len(inventory.entries) - len(chosen)} entries ({_size(inventory.bytes - sum(e.bytes for e in chosen))}) "
          f"kept")
    return 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "check": cmd_check, "compare": cmd_compare, "list": cmd_list,
            "data": cmd_data, "train": cmd_train, "study": cmd_study, "cache": cmd_cache}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for a user's mistake, with one line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
        if args.extra_benchmarks:
            import os

            from silc_eval.core.paths import EXTRA_BENCHMARKS_ENV, extra_benchmark_dirs

            folders = [*extra_benchmark_dirs(), *args.extra_benchmarks]
            os.environ[EXTRA_BENCHMARKS_ENV] = os.pathsep.join(str(f) for f in folders)  # torchrun ranks see it too
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"silc-eval: error: {unwrap_worker_error(exc) or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as exc:  # a UserError from a DataLoader worker that torch could not rebuild as one
        original = unwrap_worker_error(exc)
        if original is None:
            raise
        print(f"silc-eval: error: {original}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # last resort: the filesystem failed where no caller named the path (see core/io.py)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"silc-eval: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Stopped as exc:
        print(f"silc-eval: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("silc-eval: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
