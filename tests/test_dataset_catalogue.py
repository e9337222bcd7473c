"""The catalogue of real datasets: fixtures in each real on-disk layout, read through the real readers.

Each fixture is the smallest copy of the layout people download (a few images per class or per
caption file); the tests check counts, class order and caption grouping, and the one-line errors.
"""

import io
import json
import tarfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from silc_eval.core.errors import UserError
from silc_eval.data.formats import build_split, missing_paths, split_paths
from silc_eval.registry import load_benchmarks, parse_benchmark


@pytest.fixture(scope="module")
def benchmarks():
    return load_benchmarks()


def image_bytes(seed: int, fmt: str = "PNG", size=(20, 12)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, seed: int, fmt: str = "PNG", size=(20, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(seed, fmt, size))
    return path


def packaged(kind: str, name: str) -> list[str]:
    filename = {"classnames": "en_classnames.json", "templates": "en_zeroshot_classification_templates.json"}[kind]
    return json.loads(resources.files("clip_benchmark.datasets").joinpath(filename).read_text())[name]


# ----------------------------------------------------------------------------- ImageNet (WordNet-id folders)

def test_imagenet_val_wnid_folders_use_the_standard_order_and_packaged_names(tmp_path, benchmarks):
    from clip_benchmark.datasets.builder import all_imagenet_wordnet_ids

    val = tmp_path / "imagenet" / "val"
    tiny = image_bytes(0, "PNG", (2, 2))
    for wnid in all_imagenet_wordnet_ids:  # every class folder holds an image (an empty one is refused)
        (val / wnid).mkdir(parents=True)
        (val / wnid / "a.png").write_bytes(tiny)
    # ImageNet's own upper-case suffix; the goldfish folder (index 1) gets two more, the last class one.
    write_image(val / "n01443537" / "ILSVRC2012_val_00000001.JPEG", 1, "JPEG")
    write_image(val / "n01443537" / "ILSVRC2012_val_00000002.JPEG", 2, "JPEG")
    write_image(val / "n15075141" / "ILSVRC2012_val_00000003.JPEG", 3, "JPEG")
    (val / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    write_image(val / "n15075141" / "._ILSVRC2012_val_00000003.JPEG", 4, "JPEG")  # macOS resource fork: ignored

    benchmark = benchmarks["imagenet1k-zeroshot"]
    dataset = build_split(benchmark.dataset, tmp_path, transform=None)
    assert len(dataset.classes) == 1000 and dataset.classes[:2] == ["tench", "goldfish"]
    assert dataset.classes == packaged("classnames", "imagenet1k")
    assert len(dataset.templates) == 80
    assert len(dataset) == 1003 and dataset.targets[:5] == [0, 1, 1, 1, 2]
    assert dataset.targets.count(1) == 3 and dataset.targets.count(999) == 2 and dataset.targets[-1] == 999
    assert dataset.classes[999] == "toilet paper"
    image, label = dataset[len(dataset) - 2]  # ILSVRC...JPEG sorts before a.png
    assert label == 999 and image.size == (20, 12)
    assert not hasattr(dataset, "declaration")  # a reader hands over data, never the means to open more


def test_imagenet_flat_val_folder_says_to_sort_into_class_folders(tmp_path, benchmarks):
    val = tmp_path / "imagenet" / "val"
    for i in range(3):
        write_image(val / f"ILSVRC2012_val_{i:08d}.JPEG", i, "JPEG")
    with pytest.raises(UserError, match="valprep.sh") as info:
        build_split(benchmarks["imagenet1k-zeroshot"].dataset, tmp_path, transform=None)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- clip-benchmark's builder

FOOD_CLASSES = {"sushi": 2, "apple_pie": 3, "baby_back_ribs": 1}


def write_food101(root: Path) -> None:
    """torchvision's Food101 layout: food-101/images/<class>/<id>.jpg + food-101/meta/{train,test}.json."""
    base = root / "food101" / "food-101"
    test, train = {}, {}
    for c, (name, count) in enumerate(FOOD_CLASSES.items()):
        test[name] = [f"{name}/{100 * c + i}" for i in range(count)]
        train[name] = [f"{name}/{100 * c + 50}"]
        for seed, rel in enumerate(test[name] + train[name]):
            write_image(base / "images" / f"{rel}.jpg", 10 * c + seed, "JPEG")
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "test.json").write_text(json.dumps(test))
    (base / "meta" / "train.json").write_text(json.dumps(train))


def test_clip_benchmark_food101_is_opened_by_its_builder(tmp_path, benchmarks):
    write_food101(tmp_path)
    declaration = benchmarks["food101-zeroshot"].dataset
    assert missing_paths(declaration, tmp_path) == []
    dataset = build_split(declaration, tmp_path, transform=None)
    # torchvision sorts the class folders; clip-benchmark turns '_' into spaces.
    assert dataset.classes == ["apple pie", "baby back ribs", "sushi"]
    assert dataset.templates == packaged("templates", "food101")
    assert len(dataset) == 6
    assert sorted(dataset.targets) == [0, 0, 0, 1, 2, 2]
    image, label = dataset[0]
    assert image.size == (20, 12) and label == dataset.targets[0]
    assert len(dataset.fingerprint) == 16

    train = build_split({**declaration, "train_split": "train"}, tmp_path, transform=None, split="train")
    assert len(train) == 3 and sorted(train.targets) == [0, 1, 2]


def test_clip_benchmark_missing_folder_names_what_belongs_there(tmp_path, benchmarks):
    declaration = benchmarks["food101-zeroshot"].dataset
    (tmp_path / "food101" / "food-101" / "images").mkdir(parents=True)
    assert missing_paths(declaration, tmp_path) == [tmp_path / "food101/food-101/meta/test.json"]
    with pytest.raises(UserError, match=r"food101/food-101/meta/test\.json") as info:
        build_split(declaration, tmp_path, transform=None)
    assert "\n" not in str(info.value)


def test_clip_benchmark_declarations_are_checked_when_loaded(tmp_path):
    def declare(name, task, cb_name):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\ntask: {task}\ngroup: g\nmain_metric: acc1\ndataset:\n  name: d\n"
                        f"  source: data-root\n  format: clip_benchmark\n  dataset: {cb_name}\n  root: x\n")
        return path

    with pytest.raises(UserError, match="'no_such_set' is not bridged.*cifar10"):
        parse_benchmark(declare("a", "zeroshot_classification", "no_such_set"))
    with pytest.raises(UserError, match="does not fit task zeroshot_classification"):
        parse_benchmark(declare("b", "zeroshot_classification", "mscoco_captions"))
    assert parse_benchmark(declare("c", "zeroshot_classification", "dtd")).dataset["dataset"] == "dtd"


# ----------------------------------------------------------------------------- clip-benchmark's webdataset layout

def write_tar(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def write_wds(root: Path) -> Path:
    """wds_<name>/: test/{0,1}.tar (+ nshards.txt), classnames.txt, zeroshot_classification_templates.txt."""
    folder = root / "wds_cifar10"
    write_tar(folder / "test" / "0.tar", {"s0000000.webp": image_bytes(0, "WEBP"), "s0000000.cls": b"2",
                                          "s0000001.png": image_bytes(1), "s0000001.cls": b"0",
                                          "s0000002.jpg": image_bytes(2, "JPEG"), "s0000002.cls": b"1"})
    write_tar(folder / "test" / "1.tar", {"s0000003.png": image_bytes(3), "s0000003.cls": b"1",
                                          "s0000004.webp": image_bytes(4, "WEBP"), "s0000004.cls": b"2"})
    (folder / "test" / "nshards.txt").write_text("2\n")
    (folder / "classnames.txt").write_text("airplane\nautomobile\nbird\n")
    (folder / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na blurry photo of a {c}.\n")
    return folder


def test_wds_shards_are_read_in_order_with_their_labels(tmp_path, benchmarks):
    write_wds(tmp_path)
    declaration = benchmarks["cifar10-zeroshot-wds"].dataset
    assert missing_paths(declaration, tmp_path) == []
    dataset = build_split(declaration, tmp_path, transform=None)
    assert dataset.classes == ["airplane", "automobile", "bird"]
    assert dataset.templates == ["a photo of a {c}.", "a blurry photo of a {c}."]
    assert len(dataset) == 5
    assert dataset.targets == [2, 0, 1, 1, 2]
    images = [dataset[i][0] for i in range(5)]
    assert all(image.size == (20, 12) and image.mode == "RGB" for image in images)
    assert np.array_equal(np.asarray(images[1]), np.asarray(Image.open(io.BytesIO(image_bytes(1))).convert("RGB")))


def test_wds_label_outside_the_class_list_is_a_user_error(tmp_path, benchmarks):
    folder = write_wds(tmp_path)
    write_tar(folder / "test" / "1.tar", {"s0000003.png": image_bytes(3), "s0000003.cls": b"7"})
    with pytest.raises(UserError, match=r"1\.tar:s0000003\.cls holds '7'; expected a class index in 0\.\.2"):
        build_split(benchmarks["cifar10-zeroshot-wds"].dataset, tmp_path, transform=None)


def test_wds_missing_split_names_the_layout(tmp_path, benchmarks):
    (tmp_path / "wds_cifar10").mkdir()
    (tmp_path / "wds_cifar10" / "classnames.txt").write_text("a\n")
    declaration = benchmarks["cifar10-zeroshot-wds"].dataset
    assert missing_paths(declaration, tmp_path) == [tmp_path / "wds_cifar10" / "test"]
    with pytest.raises(UserError, match=r"wds_cifar10/test/0\.tar"):
        build_split(declaration, tmp_path, transform=None)


# ----------------------------------------------------------------------------- retrieval: Karpathy JSON

def karpathy_entry(filename, split, captions, filepath=None, imgid=0):
    entry = {"filename": filename, "split": split, "imgid": imgid,
             "sentences": [{"raw": c, "tokens": c.lower().split(), "imgid": imgid} for c in captions]}
    if filepath:
        entry["filepath"] = filepath
    return entry


def test_karpathy_coco_reads_the_test_split_from_val2014(tmp_path, benchmarks):
    entries = []
    for i, split in enumerate(["test", "restval", "test", "val", "train", "test"]):
        folder = "train2014" if split == "train" else "val2014"
        name = f"COCO_{folder}_{i:012d}.jpg"
        write_image(tmp_path / "coco" / folder / name, i, "JPEG")
        entries.append(karpathy_entry(name, split, [f"A photo number {i}, caption {k}. " for k in range(5 + i % 2)],
                                      filepath=folder, imgid=i))
    (tmp_path / "coco" / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    dataset = build_split(benchmarks["coco5k-retrieval"].dataset, tmp_path, transform=None)
    assert [p.name for p in dataset.image_paths] == [f"COCO_val2014_{i:012d}.jpg" for i in (0, 2, 5)]
    assert [len(c) for c in dataset.captions] == [5, 5, 6]
    assert dataset.captions[2][5] == "A photo number 5, caption 5."
    assert dataset[1][1] == [f"A photo number 2, caption {k}." for k in range(5)]


def test_karpathy_flickr_has_no_filepath(tmp_path, benchmarks):
    entries = [karpathy_entry(f"{1000 + i}.jpg", "test" if i < 2 else "train", [f"dog {i} {k}" for k in range(5)],
                              imgid=i) for i in range(3)]
    for i in range(3):
        write_image(tmp_path / "flickr30k" / "flickr30k-images" / f"{1000 + i}.jpg", i, "JPEG")
    (tmp_path / "flickr30k" / "dataset_flickr30k.json").write_text(json.dumps({"images": entries}))
    dataset = build_split(benchmarks["flickr30k-retrieval"].dataset, tmp_path, transform=None)
    assert len(dataset) == 2
    assert dataset.image_paths[1] == tmp_path / "flickr30k" / "flickr30k-images" / "1001.jpg"
    assert dataset.captions[1] == [f"dog 1 {k}" for k in range(5)]


# ----------------------------------------------------------------------------- retrieval: clip-benchmark's annotation files

def coco_format(images: list[tuple[int, str]], captions: list[tuple[int, str]]) -> dict:
    return {"images": [{"id": i, "file_name": f} for i, f in images],
            "annotations": [{"id": k, "image_id": i, "caption": c} for k, (i, c) in enumerate(captions)]}


def test_clip_benchmark_mscoco_captions_layout(tmp_path, benchmarks):
    images = [(42, "COCO_val2014_000000000042.jpg"), (7, "COCO_val2014_000000000007.jpg")]
    for image_id, name in images:
        write_image(tmp_path / "coco" / "val2014" / name, image_id, "JPEG")
    captions = [(42, "b first"), (7, "a first"), (42, "b second"), (7, "a second"), (7, "a third")]
    (tmp_path / "coco" / "coco_test_karpathy.json").write_text(json.dumps(coco_format(images, captions)))
    declaration = benchmarks["coco5k-retrieval-cb"].dataset
    assert missing_paths(declaration, tmp_path) == []
    dataset = build_split(declaration, tmp_path, transform=None)
    # torchvision's CocoCaptions order: ascending image id; captions in file order.
    assert [p.name for p in dataset.image_paths] == ["COCO_val2014_000000000007.jpg", "COCO_val2014_000000000042.jpg"]
    assert dataset.captions == [["a first", "a second", "a third"], ["b first", "b second"]]


def test_clip_benchmark_flickr30k_layout(tmp_path, benchmarks):
    folder = tmp_path / "flickr30k" / "flickr30k-images"
    for i in range(2):
        write_image(folder / f"{500 + i}.jpg", i, "JPEG")
    (folder / "flickr30k_test_karpathy.txt").write_text(
        "image,caption\n500.jpg,A man, a dog.\n501.jpg,Two cats.\n500.jpg,Another caption\n")
    dataset = build_split(benchmarks["flickr30k-retrieval-cb"].dataset, tmp_path, transform=None)
    assert [p.name for p in dataset.image_paths] == ["500.jpg", "501.jpg"]
    assert dataset.captions == [["A man, a dog.", "Another caption"], ["Two cats."]]


def test_clip_benchmark_retrieval_missing_annotations_is_one_line(tmp_path, benchmarks):
    (tmp_path / "coco" / "val2014").mkdir(parents=True)
    declaration = benchmarks["coco5k-retrieval-cb"].dataset
    with pytest.raises(UserError, match=r"coco/coco_test_karpathy\.json") as info:
        build_split(declaration, tmp_path, transform=None)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- retrieval: COCO captions JSON

def test_coco_captions_json_through_pycocotools(tmp_path, benchmarks):
    images = [(139, "000000000139.jpg"), (285, "000000000285.jpg"), (90, "000000000090.jpg")]
    for image_id, name in images:
        write_image(tmp_path / "coco" / "val2017" / name, image_id, "JPEG")
    captions = [(285, "bear 1"), (139, "room 1"), (90, "field 1"), (285, "bear 2"), (139, "room 2"), (90, "field 2"),
                (285, "bear 3")]
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "captions_val2017.json").write_text(
        json.dumps({"info": {}, "licenses": [], **coco_format(images, captions)}))
    declaration = benchmarks["coco2017-val-retrieval"].dataset
    assert split_paths(declaration) == ["coco/annotations/captions_val2017.json", "coco/val2017"]
    dataset = build_split(declaration, tmp_path, transform=None)
    assert [p.name for p in dataset.image_paths] == ["000000000090.jpg", "000000000139.jpg", "000000000285.jpg"]
    assert dataset.captions == [["field 1", "field 2"], ["room 1", "room 2"], ["bear 1", "bear 2", "bear 3"]]
    image, captions_of_first = dataset[0]
    assert image.size == (20, 12) and captions_of_first == ["field 1", "field 2"]


def test_coco_captions_image_missing_names_it(tmp_path, benchmarks):
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "captions_val2017.json").write_text(
        json.dumps(coco_format([(1, "000000000001.jpg")], [(1, "x")])))
    with pytest.raises(UserError, match="000000000001.jpg"):
        build_split(benchmarks["coco2017-val-retrieval"].dataset, tmp_path, transform=None)
