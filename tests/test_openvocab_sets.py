"""The CAT-Seg / SAN open-vocabulary sets: `data prepare ade847` / `pc459`, label sets above 255 classes, and the
coco-stuff-to-*-openvocab and training-free definitions run end to end on tiny copies of their layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import assert_fails_cleanly
from silc_eval.cli import main
from silc_eval.core.errors import UserError
from silc_eval.core.paths import benchmarks_dir
from silc_eval.data.segmentation import SegmentationDataset, display_names, load_class_file, segmentation_dataset
from silc_eval.evaluate.api import build_splits, dataset_root, evaluate_benchmark
from silc_eval.producers import ade847, pc459
from silc_eval.registry import load_benchmarks, parse_benchmark, resolve_suite

DEFINITIONS = benchmarks_dir() / "definitions"
SETS = {"ade847": 847, "pc459": 459, "pc59": 59, "voc20": 20, "voc20b": 21}
ZEROSHOT = {"ade847-zeroshot-seg": 847, "pc459-zeroshot-seg": 459, "voc20b-zeroshot-seg": 21}
WALL, PIER, ADDING_MACHINE, UNKNOWN = 2978, 1857, 3148, 1  # ADE object ids of classes 0, 255 and 846; not evaluated
IGNORE = 65535


# ----------------------------------------------------------------------------- synthetic raw releases

def seg_png(objects: np.ndarray) -> np.ndarray:
    """Return ADE20K-full's colour coding of an object-id map: R // 10 = id // 256 (R's last digit is noise), G =
    id % 256, B an instance number."""
    objects = np.asarray(objects, dtype=np.int64)
    return np.stack([(objects // 256) * 10 + 7, objects % 256, np.full_like(objects, 99)], axis=-1).astype(np.uint8)


def small_objects(height: int = 10, width: int = 12) -> np.ndarray:
    objects = np.full((height, width), WALL)
    objects[2:6, 3:8] = PIER
    objects[7:, :4] = ADDING_MACHINE
    objects[0, :] = 0  # unlabelled
    objects[9, 9:] = UNKNOWN  # an ADE object class outside the 847
    return objects


def small_expected(height: int = 10, width: int = 12) -> np.ndarray:
    expected = np.zeros((height, width), dtype=np.uint16)
    expected[2:6, 3:8] = 255
    expected[7:, :4] = 846
    expected[0, :] = IGNORE
    expected[9, 9:] = IGNORE
    return expected


def write_ade_image(folder: Path, name: str, objects: np.ndarray, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    height, width = objects.shape
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.linspace(0, 255, width)[None, :, None] + rng.integers(0, 20, (height, width, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}.jpg")
    Image.fromarray(seg_png(objects)).save(folder / f"{name}_seg.png")


def write_ade_release(root: Path, large: bool = False) -> Path:
    """Write an ADE20K_2021_17_01 folder: two small validation images in scene folders (one beside its
    _parts_1.png), optionally a large one (resized), and a training image that must be left out."""
    source = root / "ADE20K_2021_17_01"
    validation = source / "images" / "ADE" / "validation"
    write_ade_image(validation / "cultural" / "apse_indoor", "ADE_val_00000002", small_objects(), seed=2)
    objects = small_objects(12, 16)
    write_ade_image(validation / "urban" / "street", "ADE_val_00000001", objects, seed=1)
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(validation / "urban" / "street" / "ADE_val_00000001_parts_1.png")
    if large:
        objects = np.full((520, 530), WALL)
        objects[:, 265:] = PIER
        objects[100:101, :] = ADDING_MACHINE
        write_ade_image(validation / "home", "ADE_val_00000003", objects, seed=3)
    write_ade_image(source / "images" / "ADE" / "training" / "home", "ADE_train_00000001", small_objects(), seed=4)
    return source


def read_tif(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "I;16"
        return np.array(img)


def write_pc459_release(root: Path, ids=("2008_000002", "2008_000003"), extra=("2008_000005",)) -> Path:
    """Write VOCdevkit/VOC2010 with JPEGImages, the val list of ids, and trainval/<id>.mat for ids and extra."""
    savemat = pytest.importorskip("scipy.io").savemat
    voc = root / "VOCdevkit" / "VOC2010"
    (voc / "trainval").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("\n".join(ids) + "\n")
    for index, image_id in enumerate(ids + extra):
        savemat(voc / "trainval" / f"{image_id}.mat", {"LabelMap": pc459_map(index)})
        Image.fromarray(np.full((10, 12, 3), 30 * index, np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    return voc


def pc459_map(index: int) -> np.ndarray:
    """Return a 10x12 uint16 LabelMap: classes 1 (accordion), 256, 459 (wool) and 0 (unlabelled) in bands."""
    label = np.full((10, 12), 1 + index, dtype=np.uint16)
    label[3:6] = 256
    label[6:9] = 459
    label[9, :5] = 0
    return label


# ----------------------------------------------------------------------------- ADE-847 converter

def test_ade847_class_ids_and_seg_decoding():
    assert len(ade847.ADE_CLASS_IDS) == len(set(ade847.ADE_CLASS_IDS)) == 847
    lookup = ade847.class_lookup()
    assert (lookup[WALL], lookup[PIER], lookup[ADDING_MACHINE], lookup[UNKNOWN]) == (0, 255, 846, IGNORE)
    objects = small_objects()
    assert np.array_equal(ade847.object_classes(seg_png(objects)), objects)
    assert np.array_equal(ade847.label_map(objects), small_expected())
    assert ade847.resized_size(520, 530) == (512, 522) and ade847.resized_size(700, 600) == (597, 512)
    assert ade847.resized_size(512, 900) is None and ade847.resized_size(300, 200) is None


def test_ade847_prepare_writes_the_catseg_layout(tmp_path):
    cv2 = pytest.importorskip("cv2")
    source = write_ade_release(tmp_path, large=True)
    assert ade847.prepare_ade847(source) == 3  # the training image is left out
    images = source / "images_detectron2" / "validation"
    annotations = source / "annotations_detectron2" / "validation"
    assert sorted(p.name for p in images.iterdir()) == [f"ADE_val_0000000{i}.jpg" for i in (1, 2, 3)]
    assert sorted(p.name for p in annotations.iterdir()) == [f"ADE_val_0000000{i}.tif" for i in (1, 2, 3)]
    assert np.array_equal(read_tif(annotations / "ADE_val_00000002.tif"), small_expected())
    assert np.array_equal(read_tif(annotations / "ADE_val_00000001.tif"), small_expected(12, 16))
    large = read_tif(annotations / "ADE_val_00000003.tif")
    with Image.open(images / "ADE_val_00000003.jpg") as img:
        assert img.size == (522, 512) and img.format == "JPEG"
    full = np.zeros((520, 530), np.uint16)
    full[:, 265:] = 255
    full[100:101, :] = 846
    assert np.array_equal(large, cv2.resize(full, (522, 512), interpolation=cv2.INTER_NEAREST))
    assert set(np.unique(large)) == {0, 255, 846} and large[0, 0] == 0 and large[0, -1] == 255
    manifest = yaml.safe_load(ade847.manifest_path(source).read_text())
    assert manifest["images"] == 3 and manifest["resized"] == 1 and manifest["class_ids"][255] == PIER


def test_ade847_prepared_maps_read_through_the_definitions(tmp_path):
    pytest.importorskip("cv2")
    write_ade_release(tmp_path)
    assert main(["data", "prepare", "ade847", "--ade20k", str(tmp_path / "ADE20K_2021_17_01")]) == 0
    for name in ("coco-stuff-to-ade847-openvocab", "ade847-zeroshot-seg"):
        declaration = yaml.safe_load((DEFINITIONS / f"{name}.yaml").read_text())["dataset"]
        dataset = segmentation_dataset(declaration, tmp_path)
        assert len(dataset) == 2 and dataset.num_classes == 847 and dataset.ignore_index == IGNORE
        _, label, _ = dataset[1]  # ADE_val_00000002 (sorted)
        assert label[3, 4] == 255 and label[8, 0] == 846 and label[1, 1] == 0  # 255 is the class 'pier'
        assert label[0, 0] == IGNORE and label[9, 10] == IGNORE
        assert dataset.class_names[255] == "pier" and len(set(dataset.class_names)) == 847
        assert "bag (handbag)" in dataset.class_names and "bag" in dataset.class_names


@pytest.mark.parametrize("damage, expected", [
    (lambda source: None, r"images/ADE/validation"),
    (lambda source: write_ade_image(source / "images" / "ADE" / "validation" / "x", "ADE_val_00000009",
                                    small_objects()) or (source / "images" / "ADE" / "validation" / "x" /
                                                         "ADE_val_00000009_seg.png").unlink(),
     r"ADE_val_00000009_seg\.png not found"),
    (lambda source: (source / "images" / "ADE" / "validation" / "x").mkdir(parents=True), r"no ADE_val_\*\.jpg"),
])
def test_ade847_bad_layouts_are_one_line(tmp_path, capsys, damage, expected):
    source = tmp_path / "ADE20K_2021_17_01"
    source.mkdir()
    damage(source)
    assert_fails_cleanly(capsys, ["data", "prepare", "ade847", "--ade20k", str(source), "--out", str(tmp_path / "o")],
                         expected, watch=[tmp_path])


def test_ade847_grey_seg_png_is_refused(tmp_path):
    pytest.importorskip("cv2")
    source = write_ade_release(tmp_path)
    seg = source / "images" / "ADE" / "validation" / "urban" / "street" / "ADE_val_00000001_seg.png"
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(seg)
    with pytest.raises(UserError, match=r"ADE_val_00000001_seg\.png is a L-mode image; expected"):
        ade847.prepare_ade847(source, tmp_path / "out")


# ----------------------------------------------------------------------------- PC-459 converter

def test_pc459_prepare_subtracts_one_and_ignores_unlabelled(tmp_path):
    voc = write_pc459_release(tmp_path)
    assert pc459.prepare_pc459(voc) == 2  # the val list's ids only, not the extra trainval one
    out = voc / "annotations_detectron2" / "pc459_val"
    assert sorted(p.name for p in out.glob("*.tif")) == ["2008_000002.tif", "2008_000003.tif"]
    for index, image_id in enumerate(("2008_000002", "2008_000003")):
        label = read_tif(out / f"{image_id}.tif")
        expected = pc459_map(index).astype(np.int64) - 1
        expected[expected < 0] = IGNORE
        assert np.array_equal(label, expected)
        assert label[0, 0] == index and label[4, 0] == 255 and label[7, 0] == 458 and label[9, 0] == IGNORE
    assert yaml.safe_load(pc459.manifest_path(out).read_text())["images"] == 2


def test_pc459_other_split_file_and_out(tmp_path, capsys):
    voc = write_pc459_release(tmp_path)
    split = tmp_path / "pascalcontext_val.txt"
    split.write_text("2008_000005\n")
    code = main(["data", "prepare", "pc459", "--voc2010", str(voc), "--split-file", str(split), "--out",
                 str(tmp_path / "o")])
    assert code == 0 and "wrote 1 Pascal Context-459 label maps" in capsys.readouterr().out
    assert np.array_equal(read_tif(tmp_path / "o" / "2008_000005.tif")[0], np.full(12, 2, np.uint16))


def test_pc459_bad_values_name_the_file(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    voc = write_pc459_release(tmp_path)
    savemat(voc / "trainval" / "2008_000003.mat", {"LabelMap": np.full((10, 12), 460, np.uint16)})
    with pytest.raises(UserError, match=r"2008_000003\.mat: LabelMap has values 460; expected class ids 1\.\.459"):
        pc459.prepare_pc459(voc)
    savemat(voc / "trainval" / "2008_000003.mat", {"Other": np.zeros((2, 2))})
    with pytest.raises(UserError, match=r"2008_000003\.mat has no LabelMap \(variables: Other\)"):
        pc459.prepare_pc459(voc)


@pytest.mark.parametrize("damage, expected", [
    (lambda voc: None, r"VOC2010/trainval not found|expected .*VOC2010/trainval"),
    (lambda voc: (voc / "trainval").mkdir(parents=True), r"split file not found: expected .*SegmentationContext/val"),
    (lambda voc: (voc / "trainval").mkdir(parents=True) or (voc / "ImageSets" / "SegmentationContext").mkdir(
        parents=True) or (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n"),
     r"trainval/2008_000002\.mat not found \(1 of the 1 ids"),
])
def test_pc459_bad_layouts_are_one_line(tmp_path, capsys, damage, expected):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    voc.mkdir(parents=True)
    damage(voc)
    assert_fails_cleanly(capsys, ["data", "prepare", "pc459", "--voc2010", str(voc)], expected, watch=[tmp_path])


# ----------------------------------------------------------------------------- label sets above 255 classes

def test_a_label_set_above_255_classes_ignores_65535_and_keeps_class_255(tmp_path):
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.array([[0, 255, 299], [IGNORE, 7, 7]], np.uint16)).save(tmp_path / "a.png")
    classes = [[f"class {i}"] for i in range(300)]
    dataset = SegmentationDataset([tmp_path / "a.jpg"], [tmp_path / "a.png"], classes, ["{c}"])
    assert dataset.ignore_index == IGNORE
    assert dataset[0][1].tolist() == [[0, 255, 299], [IGNORE, 7, 7]]
    reduced = SegmentationDataset([tmp_path / "a.jpg"], [tmp_path / "a.png"], classes, ["{c}"], reduce_zero_label=True)
    assert reduced[0][1].tolist() == [[IGNORE, 254, 298], [IGNORE, 6, 6]]
    Image.fromarray(np.array([[0, 255, 300], [0, 0, 0]], np.uint16)).save(tmp_path / "a.png")
    with pytest.raises(UserError, match=r"label values 300; expected values in \[0, 300\) or 65535"):
        dataset[0]
    small = SegmentationDataset([tmp_path / "a.jpg"], [tmp_path / "a.png"], classes[:20], ["{c}"])
    assert small.ignore_index == 255


def test_display_names_tell_shared_first_names_apart():
    names = display_names([["bag"], ["pot", "flowerpot"], ["bag", "handbag", "purse"], ["pot"], ["wall"]])
    assert names == ["bag", "pot (flowerpot)", "bag (handbag)", "pot", "wall"]
    with pytest.raises(UserError, match=r"classes\.txt: lines 1, 3 would all be shown as class 'bag'"):
        display_names([["bag"], ["wall"], ["bag"]], "classes.txt")


def test_a_trained_head_refuses_a_training_split_above_255_classes(tmp_path, tiny_model):
    from silc_eval.machinery import heads

    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.zeros((2, 3), np.uint16)).save(tmp_path / "a.png")
    dataset = SegmentationDataset([tmp_path / "a.jpg"], [tmp_path / "a.png"], [[f"c{i}"] for i in range(300)],
                                  ["{c}"], name="wide")
    with pytest.raises(UserError, match="dataset wide has 300 classes: a trained head's training split needs at most"):
        heads.cache_features(tiny_model, dataset, lambda w: w, "x", {"seeds": [0], "amp": False})


# ----------------------------------------------------------------------------- the definitions

def test_shipped_class_files_and_definitions():
    benchmarks = load_benchmarks()
    for key, count in SETS.items():
        classes = load_class_file(f"benchmarks:classes/catseg/{key}.txt", Path("/nonexistent"))
        assert len(classes) == count and len(set(display_names(classes))) == count
        benchmark = benchmarks[f"coco-stuff-to-{key}-openvocab"]
        assert benchmark.task == "openvocab_segmentation" and benchmark.main_metric == "mIoU"
        assert benchmark.dataset["num_classes"] == count
        assert benchmark.dataset["train"] == benchmarks["coco-stuff-to-ade150-openvocab"].dataset["train"]
        shared = ("short_side", "window", "stride", "steps", "train_batch_size", "max_train_images", "seeds")
        assert {k: benchmark.params[k] for k in shared} == {
            k: benchmarks["coco-stuff-to-ade150-openvocab"].params[k] for k in shared}
    for name, count in ZEROSHOT.items():
        assert benchmarks[name].task == "zeroshot_segmentation" and benchmarks[name].dataset["num_classes"] == count
    voc20b = load_class_file("benchmarks:classes/catseg/voc20b.txt", Path("/x"))
    assert len(voc20b[0]) == 39 and voc20b[1:] == load_class_file("benchmarks:classes/catseg/voc20.txt", Path("/x"))
    pc59 = {names[0] for names in load_class_file("benchmarks:classes/catseg/pc59.txt", Path("/x"))}
    assert set(voc20b[0]) == pc59 - {names[0] for names in voc20b[1:]}
    suite = [b.name for b in resolve_suite("openvocab")]
    assert suite[:6] == [f"coco-stuff-to-{key}-openvocab" for key in ("ade847", "pc459", "ade150", "pc59", "voc20",
                                                                     "voc20b")]
    assert set(ZEROSHOT) | {"ade20k-zeroshot-seg", "pc59-zeroshot-seg", "voc20-zeroshot-seg"} == set(suite[6:])
    assert set(suite[:6]) <= {b.name for b in resolve_suite("paper-silc")}


# ----------------------------------------------------------------------------- end to end on tiny layouts

def write_coco_stuff_train(root: Path, count: int = 3) -> None:
    images, annotations = root / "coco_stuff164k" / "images" / "train2017", root / "coco_stuff164k" / "annotations" / \
        "train2017"
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    for i in range(count):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(images / f"{i:012d}.jpg")
        label = np.full((12, 16), i, np.uint8)
        label[:, 8:] = 170 - i
        label[0] = 255
        Image.fromarray(label).save(annotations / f"{i:012d}_labelTrainIds.png")


def run_definition(tmp_path: Path, name: str, data_root: Path, model, **overrides):
    """Return the Evaluation of a copy of a shipped definition with tiny parameters and a one-template file."""
    data = yaml.safe_load((DEFINITIONS / f"{name}.yaml").read_text())
    data["dataset"]["templates"] = "templates.txt"
    (data_root / "templates.txt").write_text("a photo of a {c}.\n")
    data["params"].update(short_side=32, window=32, stride=32, batch_size=4, **overrides)
    path = tmp_path / "definitions" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    benchmark = parse_benchmark(path)
    splits = build_splits(benchmark, dataset_root(benchmark.dataset, data_root, None), None)
    return evaluate_benchmark(model, benchmark, splits), splits


TINY_HEAD = dict(steps=2, train_batch_size=2, max_train_images=2, seeds=[0], hidden_dim=16)


def label_totals(samples: dict) -> np.ndarray:
    """Return per class the labelled pixels counted by the metric (over images, for the first seed)."""
    label = np.asarray(samples["label"])
    return (label[0] if label.ndim == 3 else label).sum(axis=0)


def expected_totals(dataset) -> np.ndarray:
    labels = torch.cat([dataset.label(i).reshape(-1) for i in range(len(dataset))])
    labels = labels[labels != dataset.ignore_index]
    return np.bincount(labels.numpy(), minlength=dataset.num_classes)


@pytest.mark.slow
def test_ade847_definitions_run_end_to_end(tmp_path, tiny_model):
    pytest.importorskip("cv2")
    data_root = tmp_path / "data"
    ade847.prepare_ade847(write_ade_release(data_root))
    write_coco_stuff_train(data_root)
    evaluation, splits = run_definition(tmp_path, "coco-stuff-to-ade847-openvocab", data_root, tiny_model,
                                        **TINY_HEAD)
    metrics, samples = evaluation.outcome.metrics, evaluation.outcome.samples
    assert evaluation.sizes == {"train": 3, "eval": 2}
    assert 0.0 <= metrics["mIoU"] <= 1.0 and "IoU.pier" in metrics and "IoU.bag (handbag)" in metrics
    assert sum(key.startswith("IoU.") for key in metrics) == 847
    totals = label_totals(samples)
    assert np.array_equal(totals, expected_totals(splits["eval"]))
    assert totals[255] == 4 * 5 * 2 and totals[846] == 3 * 4 + 5 * 4  # class 255 counted, 65535 not
    assert totals.sum() == (10 * 12 - 12 - 3) + (12 * 16 - 16 - 7)  # less unlabelled and unknown pixels
    unseen = np.asarray(samples["unseen"])
    assert unseen.shape == (847,) and not unseen[3] and unseen[0]  # 'tree' is a COCO-Stuff class, 'wall' is not
    zeroshot, _ = run_definition(tmp_path, "ade847-zeroshot-seg", data_root, tiny_model)
    assert np.array_equal(label_totals(zeroshot.outcome.samples), totals)
    assert 0.0 <= zeroshot.outcome.metrics["mIoU"] <= 1.0


@pytest.mark.slow
def test_pc459_definitions_run_end_to_end(tmp_path, tiny_model):
    pytest.importorskip("cv2")  # the zero-shot definition resizes as mmcv does
    data_root = tmp_path / "data"
    pc459.prepare_pc459(write_pc459_release(data_root))
    write_coco_stuff_train(data_root)
    evaluation, splits = run_definition(tmp_path, "coco-stuff-to-pc459-openvocab", data_root, tiny_model,
                                        **TINY_HEAD)
    metrics, samples = evaluation.outcome.metrics, evaluation.outcome.samples
    assert evaluation.sizes == {"train": 3, "eval": 2} and sum(k.startswith("IoU.") for k in metrics) == 459
    totals = label_totals(samples)
    assert np.array_equal(totals, expected_totals(splits["eval"]))
    assert (totals[0], totals[1], totals[255], totals[458]) == (3 * 12 + 7, 3 * 12 + 7, 2 * 36, 2 * 36)
    assert 0.0 <= metrics["mIoU"] <= 1.0 and metrics["mIoU_unseen"] is not None
    zeroshot, _ = run_definition(tmp_path, "pc459-zeroshot-seg", data_root, tiny_model)
    assert np.array_equal(label_totals(zeroshot.outcome.samples), totals)
