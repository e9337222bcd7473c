"""Readers on small fixtures in the real layouts, and their one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from silc_eval.core.errors import UserError
from silc_eval.data.formats import build_split
from silc_eval.data.readers import ImageFolderClassification, KarpathyRetrieval
from silc_eval.evaluate.api import dataset_root
from silc_eval.registry import load_benchmarks


def write_png(path: Path, seed: int, size=(24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_imagefolder_class_order_is_sorted_folders(tmp_path):
    for i, folder in enumerate(["n02", "n01", "n10"]):
        for j in range(i + 1):
            write_png(tmp_path / "val" / folder / f"{j}.png", i * 10 + j)
    dataset = ImageFolderClassification(tmp_path / "val", ["first", "second", "third"])
    assert dataset.folders == ["n01", "n02", "n10"]
    assert dataset.targets == sorted(dataset.targets)
    assert [dataset.targets.count(c) for c in range(3)] == [2, 1, 3]
    image, label = dataset[0]
    assert image.size == (24, 16) and label == 0


def test_imagefolder_class_count_mismatch_is_user_error(tmp_path):
    write_png(tmp_path / "val" / "a" / "0.png", 0)
    write_png(tmp_path / "val" / "b" / "0.png", 1)
    with pytest.raises(UserError, match="3 class names were given but .* has 2 class folders"):
        ImageFolderClassification(tmp_path / "val", ["x", "y", "z"])


def test_imagefolder_empty_class_folders_are_named(tmp_path):
    write_png(tmp_path / "val" / "a" / "0.png", 0)
    for folder in ("b", "c"):
        (tmp_path / "val" / folder).mkdir()
    (tmp_path / "val" / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=r"2 of 3 class folders hold no images: .*val/b, .*val/c; expected at least "
                                        r"one image") as info:
        ImageFolderClassification(tmp_path / "val", ["x", "y", "z"])
    assert "\n" not in str(info.value)


def test_karpathy_groups_captions_and_filters_split(tmp_path):
    entries = []
    for i in range(4):
        write_png(tmp_path / "images" / f"{i}.png", i)
        entries.append({"filepath": "images", "filename": f"{i}.png", "split": "test" if i < 3 else "train",
                        "sentences": [{"raw": f" caption {i} {k} "} for k in range(i + 1)]})
    (tmp_path / "ann.json").write_text(json.dumps({"images": entries}))
    dataset = KarpathyRetrieval(tmp_path / "ann.json", tmp_path, split="test")
    assert len(dataset) == 3
    assert dataset.captions[2] == ["caption 2 0", "caption 2 1", "caption 2 2"]
    assert dataset[1][1] == ["caption 1 0", "caption 1 1"]


def test_karpathy_missing_image_names_it(tmp_path):
    entry = {"filename": "gone.jpg", "split": "test", "sentences": [{"raw": "x"}]}
    (tmp_path / "ann.json").write_text(json.dumps({"images": [entry]}))
    with pytest.raises(UserError, match="gone.jpg"):
        KarpathyRetrieval(tmp_path / "ann.json", tmp_path)


def test_fingerprint_changes_with_the_data(tmp_path):
    write_png(tmp_path / "val" / "a" / "0.png", 0)
    first = ImageFolderClassification(tmp_path / "val", ["a"]).fingerprint
    assert ImageFolderClassification(tmp_path / "val", ["a"]).fingerprint == first
    write_png(tmp_path / "val" / "a" / "1.png", 1)
    assert ImageFolderClassification(tmp_path / "val", ["a"]).fingerprint != first


def test_imagenet_layout_uses_clip_benchmark_names_and_80_templates(tmp_path):
    benchmark = load_benchmarks()["imagenet1k-zeroshot"]
    for index in range(1000):
        write_png(tmp_path / "imagenet" / "val" / f"n{index:08d}" / "0.png", index, size=(4, 4))
    dataset = build_split(benchmark.dataset, dataset_root(benchmark.dataset, tmp_path, None), None)
    assert len(dataset.classes) == 1000 and dataset.classes[0] == "tench" and dataset.classes[1] == "goldfish"
    assert len(dataset.templates) == 80
    assert dataset.targets[:3] == [0, 1, 2]


def test_data_root_without_layout_names_expected_paths(tmp_path):
    benchmark = load_benchmarks()["imagenet1k-zeroshot"]
    with pytest.raises(UserError, match=r"expected .*imagenet/val"):
        dataset_root(benchmark.dataset, tmp_path, None)
    with pytest.raises(UserError, match="pass --data-root"):
        dataset_root(benchmark.dataset, None, None)
