"""The `mmseg` dataset format: the real layouts of the 8 benchmarks on tiny fixtures, and the bad-input errors."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from silc_eval.core.errors import UserError
from silc_eval.core.paths import benchmarks_dir
from silc_eval.data.formats import FORMATS, build_split, format_of, split_paths
from silc_eval.data.segmentation import SegmentationDataset, check_declaration, load_class_file, segmentation_dataset
from silc_eval.evaluate.api import dataset_root, synthscenes_parts
from silc_eval.registry import BENCHMARK_OPTIONAL, BENCHMARK_REQUIRED

SEG_BENCHMARKS = {"voc21": 21, "pc60": 60, "coco-object": 81, "voc20": 20, "pc59": 59, "coco-stuff171": 171,
                  "cityscapes": 19, "ade20k": 150}
SEG_PARAMS = {"variant", "short_side", "window", "stride", "logit_scale", "prob_thd", "area_thd", "batch_size",
              "resize"}
W, H = 8, 6


def declaration(stem: str) -> dict:
    """Return the dataset block of the shipped benchmark <stem>-zeroshot-seg.yaml."""
    path = benchmarks_dir() / "definitions" / f"{stem}-zeroshot-seg.yaml"
    return yaml.safe_load(path.read_text())["dataset"]


def write_image(path: Path, seed: int, size=(W, H)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return np.array(Image.open(path).convert("RGB"))


def write_label(path: Path, values, size=(W, H), palette: bool = False) -> np.ndarray:
    """Write an (H, W) label map cycling through values; P mode with a VOC-like palette when asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    label = np.resize(np.asarray(values, dtype=np.uint8), size[0] * size[1]).reshape(size[1], size[0])
    img = Image.fromarray(label, mode="L")
    if palette:
        img = Image.fromarray(label, mode="P")
        colours = np.zeros((256, 3), dtype=np.uint8)
        colours[1:21] = np.arange(1, 21)[:, None] * [11, 7, 3] % 256
        colours[255] = [224, 224, 192]
        img.putpalette(colours.reshape(-1).tolist())
    img.save(path)
    return label


def voc_fixture(root: Path, voc: str, seg: str, split: str, labels: dict[str, list[int]]) -> None:
    base = root / "VOCdevkit" / voc
    for seed, stem in enumerate(labels):
        write_image(base / "JPEGImages" / f"{stem}.jpg", seed)
        write_label(base / seg / f"{stem}.png", labels[stem], palette=seg == "SegmentationClass")
    write_image(base / "JPEGImages" / "not_in_split.jpg", 99)
    (base / "ImageSets" / split).mkdir(parents=True)
    (base / "ImageSets" / split / "val.txt").write_text("\n".join(reversed(list(labels))) + "\n")


# ----------------------------------------------------------------------------- the real layouts

def test_voc21_split_file_order_and_palette_indices(tmp_path):
    voc_fixture(tmp_path, "VOC2012", "SegmentationClass", "Segmentation",
                {"2007_000032": [0, 1, 15, 255], "2007_000039": [20, 0, 0, 7]})
    dataset = segmentation_dataset(declaration("voc21"), tmp_path)
    assert [p.stem for p in dataset.image_paths] == ["2007_000039", "2007_000032"]  # split-file order, 3rd image out
    assert dataset.num_classes == 21 and dataset.reduce_zero_label is False and dataset.ignore_index == 255
    assert dataset.class_names[1] == "aeroplane" and dataset.class_names[-1] == "television monitor"
    assert "fence" in dataset.classes[0] and len(dataset.classes[0]) == 26
    assert dataset.classes[0][0] == "sky" and dataset.class_names[0] == "background"  # background_name, not "sky"
    assert len(dataset.templates) == 80
    annotation = dataset.annotation_paths[1]
    assert Image.open(annotation).mode == "P" and np.array(Image.open(annotation).convert("L")).max() != 255
    image, label, index = dataset[1]
    assert index == 1 and image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert label.dtype == torch.int64 and label.shape == (H, W)
    assert label.reshape(-1)[:4].tolist() == [0, 1, 15, 255]


def test_voc20_reduces_zero_label_on_the_same_files(tmp_path):
    voc_fixture(tmp_path, "VOC2012", "SegmentationClass", "Segmentation", {"a": [0, 1, 20, 255]})
    dataset = segmentation_dataset(declaration("voc20"), tmp_path)
    assert dataset.reduce_zero_label and dataset.num_classes == 20 and dataset.class_names[0] == "aeroplane"
    assert dataset[0][1].reshape(-1)[:4].tolist() == [255, 0, 19, 255]


def test_pascal_context_60_and_59(tmp_path):
    voc_fixture(tmp_path, "VOC2010", "SegmentationClassContext", "SegmentationContext",
                {"2008_000002": [0, 1, 59, 30], "2008_000003": [5]})
    pc60 = segmentation_dataset(declaration("pc60"), tmp_path)
    pc59 = segmentation_dataset(declaration("pc59"), tmp_path)
    assert len(pc60) == len(pc59) == 2 and pc60.image_paths == pc59.image_paths
    assert pc60.class_names[0] == "background" and pc60.class_names[1:] == pc59.class_names
    assert pc60.classes[-1] == ["wood"]  # the SCLIP file's trailing space is stripped
    assert pc60[1][1].reshape(-1)[:4].tolist() == [0, 1, 59, 30]
    assert pc59[1][1].reshape(-1)[:4].tolist() == [255, 0, 58, 29]


def test_ade20k_sorted_listing_and_reduce_zero_label(tmp_path):
    base = tmp_path / "ade" / "ADEChallengeData2016"
    for seed, stem in enumerate(["ADE_val_00000002", "ADE_val_00000001", "ADE_val_00000010"]):
        write_image(base / "images" / "validation" / f"{stem}.jpg", seed)
        write_label(base / "annotations" / "validation" / f"{stem}.png", [0, 1, 150, seed + 2])
    write_image(base / "images" / "training" / "ADE_train_00000001.jpg", 7)
    dataset = segmentation_dataset(declaration("ade20k"), tmp_path)
    assert [p.stem for p in dataset.image_paths] == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000010"]
    assert dataset.num_classes == 150 and dataset.class_names[:3] == ["wall", "building", "sky"]
    assert dataset[0][1].reshape(-1)[:4].tolist() == [255, 0, 149, 2]


def test_coco_stuff_and_coco_object_share_a_folder(tmp_path):
    base = tmp_path / "coco_stuff164k"
    images, annotations = base / "images" / "val2017", base / "annotations" / "val2017"
    for seed, stem in enumerate(["000000000285", "000000000139"]):
        write_image(images / f"{stem}.jpg", seed)
        write_label(annotations / f"{stem}.png", [0, 181, 255])  # raw stuffthingmaps: not read
        write_label(annotations / f"{stem}_labelTrainIds.png", [0, 170, 255, seed])
        write_label(annotations / f"{stem}_instanceTrainIds.png", [0, 80, 1, seed])
    stuff = segmentation_dataset(declaration("coco-stuff171"), tmp_path)
    objects = segmentation_dataset(declaration("coco-object"), tmp_path)
    assert [p.name for p in stuff.annotation_paths] == ["000000000139_labelTrainIds.png",
                                                        "000000000285_labelTrainIds.png"]
    assert [p.name for p in objects.annotation_paths] == ["000000000139_instanceTrainIds.png",
                                                          "000000000285_instanceTrainIds.png"]
    assert stuff[1][1].reshape(-1)[:4].tolist() == [0, 170, 255, 0]
    assert objects[0][1].reshape(-1)[:4].tolist() == [0, 80, 1, 1]
    assert objects.class_names[1] == "person" and objects.class_names[80] == "toothbrush"
    assert stuff.class_names[0] == "person" and stuff.class_names[-1] == "wood"


def test_cityscapes_nested_cities_and_suffix_mapping(tmp_path):
    base = tmp_path / "cityscapes"
    names = [("lindau", "lindau_000000_000019"), ("frankfurt", "frankfurt_000001_000538"),
             ("frankfurt", "frankfurt_000000_000294")]
    for seed, (city, name) in enumerate(names):
        write_image(base / "leftImg8bit" / "val" / city / f"{name}_leftImg8bit.png", seed)
        write_label(base / "gtFine" / "val" / city / f"{name}_gtFine_labelTrainIds.png", [seed, 18, 255])
        write_label(base / "gtFine" / "val" / city / f"{name}_gtFine_labelIds.png", [33])
    dataset = segmentation_dataset(declaration("cityscapes"), tmp_path)
    assert [p.name for p in dataset.annotation_paths] == [
        "frankfurt_000000_000294_gtFine_labelTrainIds.png", "frankfurt_000001_000538_gtFine_labelTrainIds.png",
        "lindau_000000_000019_gtFine_labelTrainIds.png"]
    image, label, _ = dataset[2]
    expected = np.array(Image.open(dataset.image_paths[2]).convert("RGB"))
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))  # PNG images: exact pixels
    assert label.reshape(-1)[:3].tolist() == [0, 18, 255]


def test_build_dataset_and_data_root_checks_for_mmseg(tmp_path):
    dataset = declaration("ade20k")
    assert split_paths(dataset) == ["ade/ADEChallengeData2016/images/validation",
                                       "ade/ADEChallengeData2016/annotations/validation"]
    with pytest.raises(UserError, match="ade/ADEChallengeData2016/images/validation"):
        dataset_root(dataset, tmp_path, None)
    base = tmp_path / "ade" / "ADEChallengeData2016"
    write_image(base / "images" / "validation" / "x.jpg", 0)
    write_label(base / "annotations" / "validation" / "x.png", [3])
    built = build_split(dataset, dataset_root(dataset, tmp_path, None), None)
    assert isinstance(built, SegmentationDataset) and len(built) == 1


def test_train_split_with_its_own_classes(tmp_path):
    write_image(tmp_path / "val" / "img" / "v.jpg", 0)
    write_label(tmp_path / "val" / "ann" / "v.png", [0, 1])
    for stem in ("t1", "t2"):
        write_image(tmp_path / "tr" / "img" / f"{stem}.jpg", 1)
        write_label(tmp_path / "tr" / "ann" / f"{stem}.png", [0, 2])
    (tmp_path / "val_classes.txt").write_text("cat, kitty\ndog\n")
    (tmp_path / "train_classes.txt").write_text("a\nb\nc\n")
    decl = {"name": "toy", "source": "data-root", "format": "mmseg", "images": "val/img", "annotations": "val/ann",
            "num_classes": 2, "classes": "val_classes.txt", "templates": "clip_benchmark:cifar10",
            "train": {"images": "tr/img", "annotations": "tr/ann", "classes": "train_classes.txt", "num_classes": 3}}
    val, train = segmentation_dataset(decl, tmp_path), segmentation_dataset(decl, tmp_path, split="train")
    assert val.classes == [["cat", "kitty"], ["dog"]] and val.class_names == ["cat", "dog"]
    assert len(train) == 2 and train.class_names == ["a", "b", "c"] and train[1][1].max() == 2
    assert train.templates == val.templates and len(val.templates) == 18
    assert train.fingerprint != val.fingerprint
    assert not hasattr(val, "declaration") and not hasattr(val, "root")  # the flow builds splits, not tasks
    assert split_paths(decl) == ["val/img", "val/ann", "val_classes.txt"]
    assert split_paths(decl, "train") == ["tr/img", "tr/ann", "train_classes.txt"]
    with pytest.raises(UserError, match="declares no training split.*'train:'"):
        segmentation_dataset({k: v for k, v in decl.items() if k != "train"}, tmp_path, split="train")
    with pytest.raises(UserError, match="unknown key 'image' in dataset.train"):
        segmentation_dataset({**decl, "train": {"image": "x", "annotations": "y"}}, tmp_path, split="train")
    with pytest.raises(UserError, match="classes and num_classes together"):
        check_declaration({**decl, "train": {"images": "x", "annotations": "y", "classes": "c.txt"}}, "b.yaml")


def test_synthscenes_parts_include_the_train_split():
    decl = {"name": "s", "source": "synthscenes", "format": "mmseg", "images": "synthscenes/segmentation/img/val",
            "annotations": "synthscenes/segmentation/ann/val", "num_classes": 3,
            "classes": "synthscenes/segmentation/classes.txt", "templates": "synthscenes/classification/t.txt",
            "train": {"images": "synthscenes/segtrain/img", "annotations": "synthscenes/segtrain/ann"}}
    assert synthscenes_parts(decl) == ["classification", "segmentation", "segtrain"]


def test_fingerprint_follows_annotations_and_classes(tmp_path):
    write_image(tmp_path / "img" / "a.jpg", 0)
    write_label(tmp_path / "ann" / "a.png", [0, 1])
    (tmp_path / "c.txt").write_text("x\ny\n")
    decl = {"name": "t", "source": "data-root", "format": "mmseg", "images": "img", "annotations": "ann",
            "num_classes": 2, "classes": "c.txt"}
    first = segmentation_dataset(decl, tmp_path).fingerprint
    assert segmentation_dataset(decl, tmp_path).fingerprint == first and len(first) == 16
    (tmp_path / "c.txt").write_text("x\nz\n")
    second = segmentation_dataset(decl, tmp_path).fingerprint
    assert second != first
    write_label(tmp_path / "ann" / "a.png", [0, 1], size=(40, 30))
    assert segmentation_dataset(decl, tmp_path).fingerprint != second


def test_collate_keeps_differently_sized_items(tmp_path):
    for stem, size in (("a", (8, 6)), ("b", (5, 9))):
        write_image(tmp_path / "img" / f"{stem}.jpg", 0, size=size)
        write_label(tmp_path / "ann" / f"{stem}.png", [1], size=size)
    (tmp_path / "c.txt").write_text("x\ny\n")
    dataset = segmentation_dataset({"name": "t", "source": "data-root", "format": "mmseg", "images": "img",
                                    "annotations": "ann", "num_classes": 2, "classes": "c.txt"}, tmp_path)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=SegmentationDataset.collate)
    images, labels, indices = next(iter(loader))
    assert [tuple(i.shape) for i in images] == [(3, 6, 8), (3, 9, 5)]
    assert [tuple(lab.shape) for lab in labels] == [(6, 8), (9, 5)] and indices.tolist() == [0, 1]


# ----------------------------------------------------------------------------- bad input

def toy(tmp_path: Path, num_classes: int = 3, reduce: bool = False) -> dict:
    (tmp_path / "classes.txt").write_text("".join(f"c{i}\n" for i in range(3)))
    return {"name": "toy", "source": "data-root", "format": "mmseg", "images": "img", "annotations": "ann",
            "num_classes": num_classes, "classes": "classes.txt", "reduce_zero_label": reduce}


def test_image_without_annotation_names_the_missing_file(tmp_path):
    write_image(tmp_path / "img" / "sub" / "a.jpg", 0)
    write_image(tmp_path / "img" / "sub" / "b.jpg", 1)
    write_label(tmp_path / "ann" / "sub" / "a.png", [0])
    with pytest.raises(UserError) as error:
        segmentation_dataset(toy(tmp_path), tmp_path)
    message = str(error.value)
    assert str(tmp_path / "ann" / "sub" / "b.png") in message and "1 of 2" in message
    assert f"{tmp_path / 'ann'}/<name>.png" in message and "\n" not in message


def test_label_values_out_of_range_name_file_values_and_range(tmp_path):
    write_image(tmp_path / "img" / "a.jpg", 0)
    write_label(tmp_path / "ann" / "a.png", [0, 2, 3, 7, 255])
    dataset = segmentation_dataset(toy(tmp_path), tmp_path)
    with pytest.raises(UserError, match=r"a\.png has label values 3, 7; expected values in \[0, 3\) or 255"):
        dataset[0]


def test_label_out_of_range_after_reduce_zero_label(tmp_path):
    write_image(tmp_path / "img" / "a.jpg", 0)
    write_label(tmp_path / "ann" / "a.png", [0, 1, 3, 4])  # reduced: 255, 0, 2, 3 -> 3 is out of [0, 3)
    dataset = segmentation_dataset(toy(tmp_path, reduce=True), tmp_path)
    with pytest.raises(UserError, match=r"label values 3 after reduce_zero_label .*\[0, 3\)"):
        dataset[0]


def test_annotation_size_mismatch_names_both_files(tmp_path):
    write_image(tmp_path / "img" / "a.jpg", 0, size=(8, 6))
    write_label(tmp_path / "ann" / "a.png", [0], size=(6, 8))
    dataset = segmentation_dataset(toy(tmp_path), tmp_path)
    with pytest.raises(UserError) as error:
        dataset[0]
    message = str(error.value)
    assert str(tmp_path / "ann" / "a.png") in message and str(tmp_path / "img" / "a.jpg") in message
    assert "6x8" in message and "8x6" in message


def test_rgb_annotation_is_rejected(tmp_path):
    write_image(tmp_path / "img" / "a.jpg", 0)
    write_image(tmp_path / "ann" / "a.png", 1)
    with pytest.raises(UserError, match=r"a\.png has 3 channels; expected a single-channel"):
        segmentation_dataset(toy(tmp_path), tmp_path)[0]


def test_class_file_line_count_mismatch(tmp_path):
    write_image(tmp_path / "img" / "a.jpg", 0)
    write_label(tmp_path / "ann" / "a.png", [0])
    with pytest.raises(UserError, match=r"class file .*classes\.txt has 3 lines but .* num_classes: 5"):
        segmentation_dataset(toy(tmp_path, num_classes=5), tmp_path)


def test_missing_images_folder_states_the_layout(tmp_path):
    with pytest.raises(UserError, match=r"image folder not found: expected .*/img \(layout: .*/img/<name>\.jpg "
                                        r"with its label map at .*/ann/<name>\.png"):
        segmentation_dataset(toy(tmp_path), tmp_path)


def test_missing_split_file_and_listed_image(tmp_path):
    write_image(tmp_path / "img" / "a.jpg", 0)
    write_label(tmp_path / "ann" / "a.png", [0])
    with pytest.raises(UserError, match=r"split file not found: expected .*val\.txt"):
        segmentation_dataset({**toy(tmp_path), "split_file": "val.txt"}, tmp_path)
    (tmp_path / "val.txt").write_text("a\nghost\n")
    with pytest.raises(UserError, match=r"1 images listed in .*val\.txt are missing, e\.g\. .*ghost\.jpg"):
        segmentation_dataset({**toy(tmp_path), "split_file": "val.txt"}, tmp_path)


def test_bad_class_files(tmp_path):
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    (tmp_path / "comma.txt").write_text("a, , b\n")
    with pytest.raises(UserError, match=r"gap\.txt line 2 has an empty class name"):
        load_class_file("gap.txt", tmp_path)
    with pytest.raises(UserError, match=r"comma\.txt line 1"):
        load_class_file("comma.txt", tmp_path)
    with pytest.raises(UserError, match=r"class file not found: expected .*nope\.txt"):
        load_class_file("benchmarks:classes/nope.txt", tmp_path)


def test_declaration_errors_name_the_benchmark_file():
    decl = declaration("voc21")
    with pytest.raises(UserError, match=r"bench\.yaml: missing field 'num_classes'"):
        format_of({k: v for k, v in decl.items() if k != "num_classes"}, "bench.yaml")
    with pytest.raises(UserError, match=r"bench\.yaml: dataset.num_classes must be a positive integer"):
        format_of({**decl, "num_classes": "21"}, "bench.yaml")


# ----------------------------------------------------------------------------- shipped class files and YAMLs

@pytest.mark.parametrize("stem,count", sorted(SEG_BENCHMARKS.items()))
def test_class_file_line_counts(stem, count):
    classes = load_class_file(f"benchmarks:classes/{stem}.txt", Path("/nonexistent"))
    assert len(classes) == count
    assert len({names[0] for names in classes}) == count  # display names are distinct


@pytest.mark.parametrize("stem", sorted(SEG_BENCHMARKS))
def test_benchmark_yaml_is_well_formed(stem):
    path = benchmarks_dir() / "definitions" / f"{stem}-zeroshot-seg.yaml"
    data = yaml.safe_load(path.read_text())
    assert BENCHMARK_REQUIRED <= set(data) <= BENCHMARK_REQUIRED | BENCHMARK_OPTIONAL
    assert data["name"] == path.stem and data["task"] == "zeroshot_segmentation" and data["main_metric"] == "mIoU"
    assert set(data["params"]) <= SEG_PARAMS and data["params"]["variant"] == "sclip"
    dataset = data["dataset"]
    check_declaration(dataset, path)
    assert dataset["format"] == "mmseg" and set(dataset) >= FORMATS["mmseg"].required
    assert dataset["num_classes"] == SEG_BENCHMARKS[stem]
    assert dataset.get("reduce_zero_label", False) == (stem in {"ade20k", "pc59", "voc20"})
    assert data["params"]["resize"] == "mmcv"  # the reference pipelines' uint8 OpenCV resize


def test_sclip_settings_per_dataset():
    params = {stem: yaml.safe_load((benchmarks_dir() / "definitions" / f"{stem}-zeroshot-seg.yaml").read_text())
              ["params"] for stem in SEG_BENCHMARKS}
    assert {s: p["short_side"] for s, p in params.items() if p["short_side"] != 336} == {"cityscapes": 560,
                                                                                       "coco-stuff171": 448}
    assert {s: p["logit_scale"] for s, p in params.items() if p["logit_scale"] != 40} == {
        "voc21": 65, "pc60": 50, "coco-object": 50}
    assert {s for s, p in params.items() if p["prob_thd"]} == {"voc21", "pc60", "coco-object"}
    assert {s: p["area_thd"] for s, p in params.items() if p["area_thd"] is not None} == {"voc21": 0.1}
    assert all((p["window"], p["stride"]) == (224, 112) for p in params.values())


def _mmseg_classes() -> dict[str, list[str]]:
    """Return {dataset class name: METAINFO classes} read from mmseg's source without importing it."""
    spec = importlib.util.find_spec("mmseg")
    if spec is None:
        pytest.skip("mmsegmentation (a test-time reference) is not installed")
    found = {}
    for path in (Path(spec.origin).parent / "datasets").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for statement in node.body:
                if isinstance(statement, ast.Assign) and getattr(statement.targets[0], "id", "") == "METAINFO":
                    keywords = {kw.arg: kw.value for kw in getattr(statement.value, "keywords", [])}
                    if "classes" in keywords:
                        found[node.name] = list(ast.literal_eval(keywords["classes"]))
    return found


def test_class_order_matches_mmseg_metainfo():
    reference = _mmseg_classes()
    squash = lambda names: [n.replace(" ", "").replace("_", "").lower() for n in names]  # noqa: E731
    for cls, stem in [("ADE20KDataset", "ade20k"), ("CityscapesDataset", "cityscapes"),
                      ("COCOStuffDataset", "coco-stuff171"), ("PascalContextDataset59", "pc59"),
                      ("PascalContextDataset", "pc60")]:
        ours = [names[0] for names in load_class_file(f"benchmarks:classes/{stem}.txt", Path("."))]
        assert squash(ours) == squash(reference[cls]), stem
    voc = [names[0] for names in load_class_file("benchmarks:classes/voc21.txt", Path("."))]
    renamed = {0: "background", 4: "boat", 11: "diningtable", 20: "tvmonitor"}  # SCLIP's wording differs here
    assert squash([renamed.get(i, n) for i, n in enumerate(voc)]) == squash(reference["PascalVOCDataset"])


def test_label_maps_are_decoded_once_and_again_when_the_file_changes(tmp_path, monkeypatch):

    write_image(tmp_path / "img" / "a.jpg", 0)
    written = write_label(tmp_path / "ann" / "a.png", [0, 1, 2, 255])
    dataset = segmentation_dataset(toy(tmp_path), tmp_path)
    decoded = []
    original = SegmentationDataset._decode_label
    monkeypatch.setattr(SegmentationDataset, "_decode_label",
                        lambda self, i, size: decoded.append(i) or original(self, i, size))
    first = dataset.label(0)
    assert torch.equal(first, torch.from_numpy(written.astype(np.int64))) and first.dtype == torch.int64
    first[:] = 0  # a caller's change does not reach the next reader
    again = segmentation_dataset(toy(tmp_path), tmp_path)  # another task of the same run
    assert torch.equal(again[0][1], torch.from_numpy(written.astype(np.int64))) and decoded == [0]
    rewritten = write_label(tmp_path / "ann" / "a.png", [2, 1])
    assert torch.equal(dataset.label(0), torch.from_numpy(rewritten.astype(np.int64))) and decoded == [0, 0]


def test_the_file_memo_keeps_the_recently_used_within_its_bytes(tmp_path):
    from silc_eval.data.segmentation import FileMemo

    memo = FileMemo(max_bytes=10)
    for name in "abc":
        memo.put((name,), name.upper(), 4)
        memo.get(("a",))
    assert memo.get(("a",))[0] == "A" and memo.get(("b",)) is None and memo.get(("c",))[0] == "C"
    memo.put(("big",), "X", 11)
    assert memo.get(("big",)) is None and memo.used == 8
