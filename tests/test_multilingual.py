"""Multilingual retrieval (Crossmodal-3600, XTD10, Flickr30k-200) through clip-benchmark's builders: one
benchmark and one record per language, the same numbers as clip-benchmark's own retrieval evaluate on its own
dataset, annotation files that clip-benchmark's create_annotation_file wrote, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from torch.utils.data import DataLoader

from conftest import RETRIEVAL_COLOURS, RETRIEVAL_PLACES, RETRIEVAL_SHAPES, _noisy_image, assert_fails_cleanly
from silc_eval.core.errors import UserError
from silc_eval.data.formats import build_split
from silc_eval.registry import load_benchmarks, resolve_benchmarks, resolve_suite
from silc_eval.tasks import TASKS

IMAGES = 10
LANGUAGES = ("en", "de")


def _captions(rng, n: int) -> list[str]:
    return [f"a {RETRIEVAL_COLOURS[rng.integers(6)]} {RETRIEVAL_SHAPES[rng.integers(4)]} at the "
            f"{RETRIEVAL_PLACES[rng.integers(5)]}" for _ in range(n)]


def write_xm3600(root: Path, seed: int = 3) -> Path:
    """Write Crossmodal-3600's raw release under root/xm3600 (captions.jsonl, images/<key>.jpg) and let
    clip-benchmark's own create_annotation_file write root/crossmodal3600_captions-<language>.json (offline:
    it downloads only what is missing)."""
    from clip_benchmark.datasets import crossmodal3600

    rng = np.random.default_rng(seed)
    images = root / "xm3600" / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for n in range(IMAGES):
        key = f"{n:016x}"
        _noisy_image(rng, rng.uniform(30, 225, size=3)).save(images / f"{key}.jpg")
        lines.append(json.dumps({"image/key": key, **{lang: {"caption": _captions(rng, 2)} for lang in LANGUAGES}}))
    (root / "xm3600" / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for language in LANGUAGES:
        crossmodal3600.create_annotation_file(str(root), language)
    return root


def write_xtd10(root: Path, elsewhere: Path, seed: int = 4) -> Path:
    """Write root/xtd10/images and root/xtd10-<language>.json as clip-benchmark's create_annotation_file lays them
    out, the image paths joined to another root (`elsewhere`, as if made on another machine)."""
    rng = np.random.default_rng(seed)
    images = root / "xtd10" / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = [f"COCO_val2014_{n:012d}.jpg" for n in range(IMAGES)]
    for name in names:
        _noisy_image(rng, rng.uniform(30, 225, size=3)).save(images / name)
    for language in LANGUAGES:
        (root / f"xtd10-{language}.json").write_text(json.dumps({
            "image_paths": [str(elsewhere / "xtd10" / "images" / name) for name in names],
            "annotations": _captions(rng, IMAGES), "indices": list(range(IMAGES))}), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("multilingual_data")
    write_xm3600(data / "multilingual")
    write_xtd10(data / "multilingual", elsewhere=Path("/nowhere/datasets"))
    return data


def test_a_multilingual_definition_is_one_benchmark_per_language():
    base = load_benchmarks()["xtd10-retrieval"]
    assert len(base.languages) == 11 and "jp" in base.languages
    expanded = resolve_benchmarks(["xtd10-retrieval"])
    assert [b.name for b in expanded] == [f"xtd10-retrieval-{x}" for x in base.languages]
    assert {b.group for b in expanded} == {"multilingual retrieval (XTD10)"}
    assert [b.dataset["language"] for b in expanded] == list(base.languages)
    assert len({b.dataset["name"] for b in expanded}) == 11  # per-language dataset names: distinct caches
    (one,) = resolve_benchmarks(["xm3600-retrieval-fil"])
    assert one.dataset["language"] == "fil" and one.suite is None
    assert len(resolve_suite("multilingual")) == 36 + 11 + 201


def _run_reference(model, dataset, params):
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_retrieval

    loader = DataLoader(dataset, batch_size=4, shuffle=False, num_workers=0, collate_fn=image_captions_collate_fn)
    return zeroshot_retrieval.evaluate(model.model, loader, model.tokenizer, model.device.type, amp=False,
                                       recall_k_list=list(params["recall_k"]))


@pytest.mark.parametrize("language", LANGUAGES)
def test_xm3600_matches_clip_benchmark_on_its_own_dataset(tiny_model, data_root, language):
    from clip_benchmark.datasets.builder import build_dataset

    (benchmark,) = resolve_benchmarks([f"xm3600-retrieval-{language}"])
    dataset = build_split(benchmark.dataset, data_root, tiny_model.preprocess)
    assert len(dataset) == IMAGES and all(len(c) == 1 for c in dataset.captions)
    params = TASKS["retrieval"].protocol({"recall_k": [1, 5]}, "test")
    ours = TASKS["retrieval"].evaluate(tiny_model, {"eval": dataset}, params, progress=False).metrics
    theirs = _run_reference(tiny_model, build_dataset("crossmodal3600", root=str(data_root / "multilingual"),
                                                      transform=tiny_model.preprocess, split="test",
                                                      download=False, language=language,
                                                      task="zeroshot_retrieval"), params)
    for k in (1, 5):
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(theirs[f"image_retrieval_recall@{k}"], abs=1e-6)
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(theirs[f"text_retrieval_recall@{k}"], abs=1e-6)
    assert 0.0 < ours["image_retrieval_recall@5"] < 1.0


def test_languages_differ_and_images_are_found_where_the_annotation_file_was_not_made(tiny_model, data_root):
    en, de = (build_split(b.dataset, data_root, None) for b in resolve_benchmarks(["xtd10-retrieval-en",
                                                                                  "xtd10-retrieval-de"]))
    assert en.image_files == de.image_files and en.captions != de.captions
    assert all(p.is_file() and p.parent == data_root / "multilingual" / "xtd10" / "images" for p in en.image_files)
    assert en.fingerprint != de.fingerprint


def test_a_run_writes_one_record_per_language_present_and_skips_the_rest(tmp_path, tiny_model_dir, data_root,
                                                                        capsys):
    from silc_eval.cli import main

    out = tmp_path / "out"
    code = main(["run", "--benchmark", "xtd10-retrieval", "--model", f"local-dir:{tiny_model_dir}", "--data-root",
                 str(data_root), "--output", str(out), "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert "skipping 9 of 11 benchmarks" in err and "xtd10-retrieval-jp" in err
    records = [json.loads(p.read_text()) for p in (out / "records").rglob("*.json")]
    by_name = {r["benchmark"]["name"]: r for r in records if "benchmark" in r}
    assert set(by_name) == {"xtd10-retrieval-en", "xtd10-retrieval-de"}
    assert by_name["xtd10-retrieval-de"]["dataset"]["fingerprint"] != by_name["xtd10-retrieval-en"]["dataset"][
        "fingerprint"]
    assert "multilingual retrieval (XTD10)" in (out / "leaderboard.md").read_text()


def _write_definition(root: Path, **changes) -> Path:
    body = yaml.safe_load((Path("benchmarks/definitions/xtd10-retrieval.yaml")).read_text())
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        elif key == "dataset":
            body["dataset"].update(value)
        else:
            body[key] = value
    (root / "definitions").mkdir(parents=True, exist_ok=True)
    (root / "definitions" / "xtd10-retrieval.yaml").write_text(yaml.safe_dump(body))
    return root


@pytest.mark.parametrize("changes, message", [
    ({"languages": ["de", "xx"]}, "has no language 'xx'"),
    ({"languages": None}, "is multilingual; expected 'languages"),
    ({"languages": []}, "must be 'all' or a non-empty list"),
    ({"dataset": {"dataset": "flickr30k", "root": "f"}}, "'languages' needs a multilingual"),
    ({"languages": None, "dataset": {"language": "xx"}}, "has no language 'xx'"),
])
def test_bad_language_declarations_are_one_line_errors(tmp_path, changes, message):
    root = _write_definition(tmp_path, **changes)
    with pytest.raises(UserError, match=message) as info:
        load_benchmarks(root)
    assert "\n" not in str(info.value)


def test_an_unknown_language_on_the_command_line_is_one_line(capsys, tmp_path):
    assert_fails_cleanly(capsys, ["run", "--benchmark", "xtd10-retrieval-xx", "--output", str(tmp_path / "o")],
                         "unknown benchmark 'xtd10-retrieval-xx'", watch=[tmp_path])
