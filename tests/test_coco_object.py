"""`silc-eval data prepare coco-object`: COCO instances rendered to *_instanceTrainIds.png label maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from silc_eval.cli import main
from silc_eval.core.errors import UserError
from silc_eval.core.paths import benchmarks_dir
from silc_eval.data.segmentation import segmentation_dataset
from silc_eval.producers import coco_object
from silc_eval.producers.coco_object import category_labels, manifest_path, prepare_coco_object

# The 80 COCO thing category ids: 1..90 without these ten.
COCO_GAPS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_IDS = [i for i in range(1, 91) if i not in COCO_GAPS]
W, H = 12, 10
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def rectangle(x0, y0, x1, y1) -> list[list[float]]:
    """Return a COCO polygon around pixel columns x0..x1-1 and rows y0..y1-1 (edges on pixel borders)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Return COCO's uncompressed RLE of a boolean mask: run lengths in column-major order, zeros first."""
    counts, current, run = [], False, 0
    for value in mask.flatten(order="F"):
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    return {"counts": counts + [run], "size": list(mask.shape)}


def crowd_mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[2:5, 3:9] = True
    mask[7, 0:4] = True
    return mask


def write_instances(coco_dir: Path, split: str = "val2017", categories=COCO_IDS) -> None:
    """Write a 3-image instances JSON: overlapping polygons (small one listed first), a crowd RLE, an empty image."""
    annotations = [
        # image 1: a small toothbrush (id 90) inside a large person (id 1); the small one is listed first
        {"id": 11, "image_id": 1, "category_id": 90, "iscrowd": 0, "segmentation": rectangle(4, 3, 7, 6)},
        {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rectangle(1, 1, 11, 9)},
        # image 2: a crowd of stop signs (id 13, after the gap at 12) as uncompressed RLE, plus a kite (id 38)
        {"id": 21, "image_id": 2, "category_id": 13, "iscrowd": 1, "segmentation": uncompressed_rle(crowd_mask())},
        {"id": 22, "image_id": 2, "category_id": 38, "iscrowd": 0, "segmentation": rectangle(9, 6, 12, 10)},
    ]
    for ann in annotations:
        ann.update(area=1.0, bbox=[0, 0, 1, 1])
    data = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": W, "height": H} for i in (1, 2, 3)],
            "annotations": annotations,
            "categories": [{"id": c, "name": f"category {c}", "supercategory": "thing"} for c in categories]}
    (coco_dir / "annotations").mkdir(parents=True, exist_ok=True)
    (coco_dir / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.array(img)


def test_category_ids_with_gaps_map_to_contiguous_labels():
    labels = category_labels(reversed(COCO_IDS))
    assert len(labels) == 80 and sorted(labels.values()) == list(range(1, 81))
    assert (labels[1], labels[11], labels[13], labels[38], labels[90]) == (1, 11, 12, 34, 80)


def test_label_maps_overlaps_crowds_and_background(tmp_path):
    write_instances(tmp_path / "coco")
    out = tmp_path / "out"
    assert prepare_coco_object(tmp_path / "coco", out) == 3
    first, second, third = (read(out / f"{i:012d}_instanceTrainIds.png") for i in (1, 2, 3))
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[1:9, 1:11] = 1  # the person: polygon edges on pixel borders cover exactly these pixels
    expected[3:6, 4:7] = 80  # the small toothbrush stays on top, though listed before the person
    assert np.array_equal(first, expected)
    expected = np.where(crowd_mask(), 12, 0)  # the crowd RLE region, exactly
    expected[6:10, 9:12] = 34
    assert np.array_equal(second, expected)
    assert not third.any()


def test_output_folder_holds_only_finished_files(tmp_path):
    write_instances(tmp_path / "coco")
    out = tmp_path / "out"
    prepare_coco_object(tmp_path / "coco", out)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000000000001_instanceTrainIds.png", "000000000002_instanceTrainIds.png",
                     "000000000003_instanceTrainIds.png", "coco_object_val2017_manifest.json"]
    manifest = json.loads(manifest_path(out, "val2017").read_text())
    assert manifest["images"] == 3 and manifest["labels"]["90"]["label"] == 80 and manifest["background"] == 0


def test_interrupted_run_leaves_no_partial_file_and_no_manifest(tmp_path, monkeypatch):
    write_instances(tmp_path / "coco")
    out = tmp_path / "out"
    prepare_coco_object(tmp_path / "coco", out)  # a finished earlier run: its manifest must not survive a failed one
    real = coco_object._png_bytes
    calls = []

    def failing(label_map):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(label_map)

    monkeypatch.setattr(coco_object, "_png_bytes", failing)
    with pytest.raises(RuntimeError):
        prepare_coco_object(tmp_path / "coco", out)
    assert not manifest_path(out, "val2017").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    for path in out.glob("*.png"):
        read(path)  # every file present is a complete PNG


def test_wrong_category_count_and_unlisted_category(tmp_path):
    write_instances(tmp_path / "few", categories=COCO_IDS[:5])
    with pytest.raises(UserError, match=r"instances_val2017\.json lists 5 categories; expected the 80"):
        prepare_coco_object(tmp_path / "few", tmp_path / "out")
    write_instances(tmp_path / "odd", categories=[c for c in COCO_IDS if c != 38] + [91])
    with pytest.raises(UserError, match="category id 38"):
        prepare_coco_object(tmp_path / "odd", tmp_path / "out2")


def test_prepared_maps_read_through_the_coco_object_benchmark(tmp_path):
    coco = tmp_path / "coco"
    write_instances(coco)
    root = tmp_path / "data"
    images = root / "coco_stuff164k" / "images" / "val2017"
    images.mkdir(parents=True)
    for i in (1, 2, 3):
        Image.fromarray(np.full((H, W, 3), 40 * i, dtype=np.uint8)).save(images / f"{i:012d}.jpg")
    assert main(["data", "prepare", "coco-object", "--coco", str(coco), "--out",
                 str(root / "coco_stuff164k" / "annotations" / "val2017")]) == 0
    declaration = yaml.safe_load((benchmarks_dir() / "definitions" / "coco-object-zeroshot-seg.yaml").read_text())
    dataset = segmentation_dataset(declaration["dataset"], root)
    assert len(dataset) == 3 and dataset.num_classes == 81
    _, label, _ = dataset[0]
    assert label[4, 5] == 80 and label[2, 2] == 1 and label[0, 0] == 0


def test_cli_missing_json_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["data", "prepare", "coco-object", "--coco", str(tmp_path / "coco"), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "coco" / "annotations" / "instances_val2017.json") in lines[0]
    assert not (tmp_path / "o").exists()


def test_cli_reports_the_count(tmp_path, capsys):
    write_instances(tmp_path / "coco", split="train2017")
    code = main(["data", "prepare", "coco-object", "--coco", str(tmp_path / "coco"), "--out", str(tmp_path / "o"),
                 "--split", "train2017"])
    assert code == 0 and "wrote 3 COCO-Object label maps" in capsys.readouterr().out
    assert manifest_path(tmp_path / "o", "train2017").is_file()
