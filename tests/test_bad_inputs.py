"""A battery of bad inputs for every evaluate-side command (run, check, report, list, data).

Each case is a user's mistake or an environment error. The contract (tests/conftest.py
assert_fails_cleanly): exit code 2, exactly one stderr line 'silc-eval: error: ...' matching the
case's pattern, no traceback, and nothing created or removed under the watched folders.

Everything a case needs is built once per module under one temporary folder (the world): a
benchmarks tree for $SILC_EVAL_BENCHMARKS (good benchmarks beside malformed ones), data roots
(the tiny ImageFolder and a tiny mmseg set, intact, with a corrupt image, with an empty class
folder, with a bad label map), checkpoints (the tiny model and bad copies of it) and a results
folder written by one real `silc-eval run`. A read-only or full filesystem is simulated by
making core/io.py's temporary-file creation or its write raise the OSError the kernel would
(tests run as root, where chmod does not stop a write).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import assert_fails_cleanly

WEIGHTS = "open_clip_model.safetensors"


@dataclass(frozen=True)
class World:
    """The module's folders (see the module docstring) and this test's own empty folder."""

    root: Path
    benchmarks: Path
    data: Path          # data roots: data/<variant> holds tiny/ (ImageFolder) and seg/ (mmseg)
    models: Path        # models/<variant>: open_clip local-dirs
    results: Path       # a `silc-eval run` output folder with one record
    bad_results: Path   # the same with a foreign JSON under records/
    a_file: Path        # a plain file, where a folder is expected
    tmp: Path           # this test's tmp_path

    def model(self, variant: str = "tiny") -> str:
        return f"local-dir:{self.models / variant}"

    def run(self, *argv: str, data: str | None = "ok", model: str | None = "tiny") -> list[str]:
        """Return the argv of a `run` into tmp/out, with --data-root data/<data> and --model models/<model>."""
        args = ["run", *argv, "--output", str(self.tmp / "out"), "--no-progress"]
        args += ["--data-root", str(self.data / data)] if data else []
        args += ["--model", self.model(model)] if model else []
        return args


# ----------------------------------------------------------------------------- building the world

IMAGEFOLDER = {"name": "tiny-val", "source": "data-root", "format": "imagefolder", "root": "tiny/val",
               "classnames": "tiny/classnames.txt", "templates": "tiny/templates.txt"}
MMSEG = {"name": "tiny-seg", "source": "data-root", "format": "mmseg", "images": "seg/img", "annotations": "seg/ann",
         "image_suffix": ".png", "annotation_suffix": ".png", "num_classes": 3, "classes": "seg/classes.txt",
         "templates": "seg/templates.txt"}
SEG_PARAMS = {"variant": "vanilla", "short_side": 32, "window": 32, "stride": 16, "batch_size": 8}


def classification_benchmark(name: str, **params) -> dict:
    return {"name": name, "task": "zeroshot_classification", "group": "classification", "main_metric": "acc1",
            "dataset": IMAGEFOLDER, "params": params}


def segmentation_benchmark(name: str, **params) -> dict:
    return {"name": name, "task": "zeroshot_segmentation", "group": "zero-shot segmentation",
            "main_metric": "mIoU", "dataset": MMSEG, "params": {**SEG_PARAMS, **params}}


BENCHMARKS = {
    "tiny-zeroshot": classification_benchmark("tiny-zeroshot"),
    "tiny-zeroshot-workers": classification_benchmark("tiny-zeroshot-workers", batch_size=4, num_workers=2),
    "tiny-seg-workers": segmentation_benchmark("tiny-seg-workers", num_workers=2),
    "bad-batch-string": classification_benchmark("bad-batch-string", batch_size="big"),
    "bad-batch-negative": classification_benchmark("bad-batch-negative", batch_size=-5),
    "bad-workers-negative": classification_benchmark("bad-workers-negative", num_workers=-1),
    "bad-amp-string": classification_benchmark("bad-amp-string", amp="yes"),
    "bad-stride-zero": segmentation_benchmark("bad-stride-zero", stride=0),
    "bad-variant": segmentation_benchmark("bad-variant", variant="magic"),
    "bad-unknown-param": classification_benchmark("bad-unknown-param", colour="red"),
}
SUITES = {"tiny": ["tiny-zeroshot"], "broken": ["tiny-zeroshot", "malformed"]}


def write_benchmarks(root: Path) -> None:
    (root / "definitions").mkdir(parents=True)
    (root / "suites").mkdir()
    for name, body in BENCHMARKS.items():
        (root / "definitions" / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    (root / "definitions" / "malformed.yaml").write_text("name: malformed\ntask: [zeroshot_classification\n")
    for name, members in SUITES.items():
        (root / "suites" / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "benchmarks": members}))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_segmentation(root: Path) -> None:
    """Write seg/: two 40x40 images with label maps of classes 0..2, class and template files."""
    rng = np.random.default_rng(7)
    for folder in ("img", "ann"):
        (root / "seg" / folder).mkdir(parents=True)
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "seg" / "img" / f"{stem}.png")
        Image.fromarray(rng.integers(0, 3, (40, 40), dtype=np.uint8), mode="L").save(root / "seg" / "ann" / f"{stem}.png")
    (root / "seg" / "classes.txt").write_text("sky\nred square\ngreen circle\n")
    (root / "seg" / "templates.txt").write_text("a photo of a {c}.\n")


def write_data(data: Path, classification) -> None:
    """Write the data roots: ok, corrupt (a truncated PNG in each set), empty-class, bad-label, empty."""
    for variant in ("ok", "corrupt", "empty-class", "bad-label"):
        shutil.copytree(classification.root, data / variant / "tiny")
        write_segmentation(data / variant)
    truncate(data / "corrupt" / "tiny" / "val" / "n001" / "000001.png")
    truncate(data / "corrupt" / "seg" / "img" / "b.png")
    for image in (data / "empty-class" / "tiny" / "val" / "n002").iterdir():
        image.unlink()
    Image.fromarray(np.full((40, 40), 7, dtype=np.uint8), mode="L").save(data / "bad-label" / "seg" / "ann" / "b.png")
    (data / "empty").mkdir()


def edited_model(models: Path, name: str, edit: Callable[[dict], dict]) -> None:
    """Write models/<name>: a copy of models/tiny whose safetensors is edit(state dict)."""
    shutil.copytree(models / "tiny", models / name)
    save_file(edit(dict(load_file(models / "tiny" / WEIGHTS))), models / name / WEIGHTS)


def poison(key: str, value: float) -> Callable[[dict], dict]:
    def edit(state: dict) -> dict:
        state[key] = torch.full_like(state[key], value)
        return state
    return edit


def write_models(models: Path, tiny_model_dir: Path) -> None:
    shutil.copytree(tiny_model_dir, models / "tiny")
    edited_model(models, "nan", poison("visual.conv1.weight", float("nan")))
    edited_model(models, "inf", poison("logit_scale", float("inf")))
    edited_model(models, "int32", lambda state: {k: (v * 100).to(torch.int32) for k, v in state.items()})
    edited_model(models, "missing-key", lambda state: {k: v for k, v in state.items() if k != "visual.proj"})
    edited_model(models, "extra-key", lambda state: {**state, "visual.extra.weight": torch.zeros(2)})
    edited_model(models, "wrong-shape", lambda state: {**state, "visual.proj": torch.zeros(3, 3)})
    shutil.copytree(models / "tiny", models / "truncated")
    truncate(models / "truncated" / WEIGHTS)
    shutil.copytree(models / "tiny", models / "pickled")  # a .bin that pickles a Python object besides tensors
    state = dict(load_file(models / "pickled" / WEIGHTS))
    (models / "pickled" / WEIGHTS).unlink()
    torch.save({"state_dict": state, "saved_from": Path("/somewhere")}, models / "pickled" / "open_clip_pytorch_model.bin")
    (models / "no-config").mkdir()
    shutil.copy(models / "tiny" / WEIGHTS, models / "no-config" / WEIGHTS)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir, tiny_classification_dir, hermetic_cache):
    """Build the module's world once and write the results folder with one real run."""
    from silc_eval.cli import main

    root = tmp_path_factory.mktemp("bad_inputs")
    built = World(root=root, benchmarks=root / "benchmarks", data=root / "data", models=root / "models",
                  results=root / "results", bad_results=root / "bad-results", a_file=root / "a-file.txt",
                  tmp=root)
    write_benchmarks(built.benchmarks)
    write_data(built.data, tiny_classification_dir)
    write_models(built.models, tiny_model_dir)
    built.a_file.write_text("not a folder\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SILC_EVAL_BENCHMARKS", str(built.benchmarks))
        code = main(["run", "--benchmark", "tiny-zeroshot", "--model", built.model(), "--data-root",
                     str(built.data / "ok"), "--output", str(built.results), "--no-progress"])
    assert code == 0 and (built.results / "leaderboard.md").is_file()
    shutil.copytree(built.results, built.bad_results)
    (built.bad_results / "records" / "tiny" / "foreign.json").write_text(json.dumps({"schema": "someone-else/v1"}))
    return built


# ----------------------------------------------------------------------------- simulated filesystem failures

def failing(code: int) -> Callable:
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def read_only_filesystem(monkeypatch) -> None:
    """No file can be created (EROFS): the temporary file of every atomic write, and the probe of --output."""
    from silc_eval.core import io

    monkeypatch.setattr(io, "_open_temporary", failing(errno.EROFS))


def full_disk(monkeypatch) -> None:
    """Files can be created but no byte written (ENOSPC)."""
    from silc_eval.core import io

    monkeypatch.setattr(io, "_write_all", failing(errno.ENOSPC))


# ----------------------------------------------------------------------------- the cases

@dataclass(frozen=True)
class Case:
    """One bad input: argv(world), the pattern its one error line must match, an optional setup(monkeypatch)."""

    id: str
    argv: Callable[[World], list[str]]
    expected: str
    setup: Callable | None = None


CASES = [
    # --- run: names
    Case("run-unknown-model", lambda w: w.run("--benchmark", "tiny-zeroshot", model=None) + ["--model", "no-such"],
         r"unknown model 'no-such'; expected a zoo name"),
    Case("run-unknown-architecture", lambda w: w.run("--benchmark", "tiny-zeroshot", model=None)
         + ["--model", f"ViT-Nope-99:{w.models / 'tiny' / WEIGHTS}"], r"unknown open_clip architecture 'ViT-Nope-99'"),
    Case("run-unknown-suite", lambda w: w.run("--suite", "nope"), r"unknown suite 'nope'; expected one of .*tiny"),
    Case("run-unknown-benchmark", lambda w: w.run("--benchmark", "nope"),
         r"unknown benchmark 'nope'; expected one of .*tiny-zeroshot"),
    Case("run-suite-and-benchmark", lambda w: w.run("--suite", "tiny", "--benchmark", "tiny-zeroshot"),
         r"not allowed with argument"),
    Case("run-unknown-device", lambda w: w.run("--benchmark", "tiny-zeroshot", "--device", "tpu"),
         r"unknown device 'tpu'"),
    # --- run: checkpoints
    Case("checkpoint-file-missing", lambda w: w.run("--benchmark", "tiny-zeroshot", model=None)
         + ["--model", f"ViT-B-32:{w.tmp / 'missing.pt'}"], r"checkpoint file not found: .*missing\.pt"),
    Case("checkpoint-local-dir-without-config", lambda w: w.run("--benchmark", "tiny-zeroshot", model="no-config"),
         r"no-config is not an open_clip local-dir: expected .*open_clip_config\.json"),
    Case("checkpoint-truncated", lambda w: w.run("--benchmark", "tiny-zeroshot", model="truncated"),
         r"checkpoint .*truncated/open_clip_model\.safetensors could not be loaded as local-dir:truncated"),
    Case("checkpoint-nan", lambda w: w.run("--benchmark", "tiny-zeroshot", model="nan"),
         r"checkpoint .*nan/open_clip_model\.safetensors: tensor visual\.conv1\.weight holds NaN; "
         r"expected finite float weights"),
    Case("checkpoint-inf", lambda w: w.run("--benchmark", "tiny-zeroshot", model="inf"),
         r"tensor logit_scale holds an infinite value; expected finite float weights"),
    Case("checkpoint-int32", lambda w: w.run("--benchmark", "tiny-zeroshot", model="int32"),
         r"int32/open_clip_model\.safetensors: tensor \S+ is int32; expected finite float weights"),
    Case("checkpoint-missing-key", lambda w: w.run("--benchmark", "tiny-zeroshot", model="missing-key"),
         r"could not be loaded as local-dir:missing-key: missing key visual\.proj$"),
    Case("checkpoint-unexpected-key", lambda w: w.run("--benchmark", "tiny-zeroshot", model="extra-key"),
         r"could not be loaded as local-dir:extra-key: unexpected key visual\.extra\.weight$"),
    Case("checkpoint-size-mismatch", lambda w: w.run("--benchmark", "tiny-zeroshot", model="wrong-shape"),
         r"size mismatch for visual\.proj: \[3, 3\] in the checkpoint, \[64, 32\] in the model"),
    Case("checkpoint-pickles-objects", lambda w: w.run("--benchmark", "tiny-zeroshot", model="pickled"),
         r"^(?!.*weights_only).*pickled/open_clip_pytorch_model\.bin could not be loaded .*not a plain state dict "
         r"\(it pickles a pathlib\.\w*Path object\)"),
    # --- run: the output folder
    Case("output-is-a-file", lambda w: ["run", "--benchmark", "tiny-zeroshot", "--output", str(w.a_file),
                                        "--data-root", str(w.data / "ok"), "--model", w.model()],
         r"--output .*a-file\.txt is an existing file; expected a folder"),
    Case("output-under-a-file", lambda w: ["run", "--benchmark", "tiny-zeroshot", "--output", str(w.a_file / "out"),
                                           "--data-root", str(w.data / "ok"), "--model", w.model()],
         r"--output .*a-file\.txt/out cannot be created: .*a-file\.txt is a file"),
    Case("output-read-only", lambda w: w.run("--benchmark", "tiny-zeroshot"),
         r"--output .*/out cannot be created: .*: Read-only file system", read_only_filesystem),
    Case("output-disk-full-writing-records", lambda w: w.run("--benchmark", "tiny-zeroshot", "--no-feature-cache"),
         r"cannot write .*/out/records/tiny/tiny-zeroshot\.samples\.npz: No space left on device", full_disk),
    # --- run: protocol parameters and benchmark files
    Case("param-batch-size-string", lambda w: w.run("--benchmark", "bad-batch-string"),
         r"bad-batch-string\.yaml.*batch_size.*'big'.*expected an integer >= 1"),
    Case("param-batch-size-negative", lambda w: w.run("--benchmark", "bad-batch-negative"),
         r"bad-batch-negative\.yaml.*batch_size.*-5.*expected an integer >= 1"),
    Case("param-num-workers-negative", lambda w: w.run("--benchmark", "bad-workers-negative"),
         r"bad-workers-negative\.yaml.*num_workers.*expected an integer >= 0"),
    Case("param-amp-string", lambda w: w.run("--benchmark", "bad-amp-string"),
         r"bad-amp-string\.yaml.*amp.*expected true or false"),
    Case("param-stride-zero", lambda w: w.run("--benchmark", "bad-stride-zero"),
         r"bad-stride-zero\.yaml.*stride.*expected an integer >= 1"),
    Case("param-unknown-variant", lambda w: w.run("--benchmark", "bad-variant"),
         r"bad-variant\.yaml.*variant.*'magic'.*expected one of"),
    Case("param-unknown-key", lambda w: w.run("--benchmark", "bad-unknown-param"),
         r"bad-unknown-param\.yaml.*unknown parameter 'colour'"),
    Case("benchmark-yaml-malformed", lambda w: w.run("--benchmark", "malformed"),
         r"malformed\.yaml: not valid YAML"),
    Case("suite-names-malformed-benchmark", lambda w: w.run("--suite", "broken"), r"malformed\.yaml: not valid YAML"),
    # --- run: data
    Case("data-root-missing", lambda w: w.run("--benchmark", "tiny-zeroshot", data=None),
         r"dataset tiny-val reads real data: pass --data-root DIR with tiny/val"),
    Case("data-root-without-layout", lambda w: w.run("--benchmark", "tiny-zeroshot", data="empty"),
         r"dataset tiny-val not found under .*/empty: expected .*tiny/val"),
    Case("suite-data-root-without-layout", lambda w: w.run("--suite", "tiny", data="empty"),
         r"suite tiny has no benchmark whose data is present"),
    Case("data-empty-class-folder", lambda w: w.run("--benchmark", "tiny-zeroshot", data="empty-class"),
         r"1 of 6 class folders hold no images: .*tiny/val/n002; expected at least one image"),
    Case("data-corrupt-image", lambda w: w.run("--benchmark", "tiny-zeroshot", data="corrupt"),
         r"cannot read image .*tiny/val/n001/000001\.png: "),
    Case("data-corrupt-image-2-workers", lambda w: w.run("--benchmark", "tiny-zeroshot-workers", data="corrupt"),
         r"^silc-eval: error: cannot read image .*tiny/val/n001/000001\.png: "),
    Case("data-corrupt-image-2-workers-segmentation", lambda w: w.run("--benchmark", "tiny-seg-workers",
                                                                      data="corrupt"),
         r"^silc-eval: error: cannot read image .*seg/img/b\.png: "),
    Case("data-bad-label-2-workers-segmentation", lambda w: w.run("--benchmark", "tiny-seg-workers", data="bad-label"),
         r"^silc-eval: error: annotation .*seg/ann/b\.png has label values 7; expected values in \[0, 3\)"),
    # --- check
    Case("check-tolerance-not-a-number", lambda w: ["check", str(w.results), "--tolerance", "tight"],
         r"--tolerance tight: 'tight' is not a number"),
    Case("check-tolerance-out-of-range", lambda w: ["check", str(w.results), "--tolerance", "acc1=150pp"],
         r"--tolerance acc1=150pp: .*outside \[0, 1\]"),
    Case("check-tolerance-no-metric", lambda w: ["check", str(w.results), "--tolerance", "=0.1"],
         r"--tolerance =0.1: expected VALUE or \[SCOPE:\]METRIC=VALUE"),
    Case("check-reference-missing", lambda w: ["check", str(w.results), "--reference", str(w.tmp / "refs.csv")],
         r"reference file not found: .*refs\.csv"),
    Case("check-match-malformed", lambda w: ["check", str(w.results), "--match", "tiny"],
         r"--match tiny: expected RECORD_MODEL=REFERENCE_MODEL"),
    Case("check-results-missing", lambda w: ["check", str(w.tmp / "nowhere")], r"results folder .*nowhere not found"),
    Case("check-results-empty", lambda w: ["check", str(w.data / "empty")], r"no result records in .*/empty"),
    Case("check-strict-foreign-record", lambda w: ["check", str(w.bad_results), "--strict"],
         r"foreign\.json: .*--strict stops at the first bad file"),
    # --- report
    Case("report-unknown-baseline", lambda w: ["report", str(w.results), "--baseline", "nobody"],
         r"baseline model 'nobody' is not in the results; expected one of tiny"),
    Case("report-unknown-format", lambda w: ["report", str(w.results), "--format", "md,pdf"],
         r"unknown report format 'pdf'"),
    Case("report-results-empty", lambda w: ["report", str(w.data / "empty")], r"no result records in .*/empty"),
    Case("report-results-missing", lambda w: ["report", str(w.tmp / "nowhere")], r"results folder .*nowhere not found"),
    Case("report-published-missing", lambda w: ["report", str(w.results), "--published", str(w.tmp / "pub.yaml")],
         r"published numbers file .*pub\.yaml not found"),
    Case("report-strict-foreign-record", lambda w: ["report", str(w.bad_results), "--strict"],
         r"foreign\.json: .*--strict stops at the first bad file"),
    Case("report-read-only-results", lambda w: ["report", str(w.results)],
         r"cannot write .*results/results\.csv: Read-only file system", read_only_filesystem),
    Case("report-disk-full", lambda w: ["report", str(w.results), "--format", "html"],
         r"cannot write .*results/report\.html: No space left on device", full_disk),
    # --- list
    Case("list-unknown-kind", lambda w: ["list", "datasets"], r"argument what: invalid choice: 'datasets'"),
    # --- data
    Case("data-synthscenes-unknown-part", lambda w: ["data", "synthscenes", "--out", str(w.tmp / "world"),
                                                     "--parts", "nope"], r"unknown SynthScenes part 'nope'"),
    Case("data-synthscenes-bad-seed", lambda w: ["data", "synthscenes", "--out", str(w.tmp / "world"), "--seed", "x"],
         r"argument --seed: invalid int value: 'x'"),
    Case("data-synthscenes-out-is-a-file", lambda w: ["data", "synthscenes", "--out", str(w.a_file)],
         r"--out .*a-file\.txt is an existing file; expected a folder"),
    Case("data-synthscenes-out-read-only", lambda w: ["data", "synthscenes", "--out", str(w.tmp / "world"),
                                                      "--parts", "retrieval", "--workers", "1"],
         r"--out .*/world cannot be created: .*Read-only file system", read_only_filesystem),
    Case("data-prepare-coco-missing", lambda w: ["data", "prepare", "coco-object", "--coco", str(w.tmp / "coco"),
                                                 "--out", str(w.tmp / "labels")],
         r"COCO instance annotations not found: expected .*coco/annotations/instances_val2017\.json"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_cleanly(case, world, tmp_path, capsys, monkeypatch):
    world = World(**{**world.__dict__, "tmp": tmp_path})
    monkeypatch.setenv("SILC_EVAL_BENCHMARKS", str(world.benchmarks))
    if case.setup is not None:
        case.setup(monkeypatch)
    assert_fails_cleanly(capsys, case.argv(world), case.expected, watch=[world.root, tmp_path])
