"""COCO-Object label maps (`<stem>_instanceTrainIds.png`) rendered from COCO instance annotations.

Label of a pixel: 1 + the index of its instance's category id in the sorted list of the
80 COCO thing category ids (ids run 1..90 with gaps, so 1 -> 1, 90 -> 80); every pixel
outside the instances is 0 (background). Instances are drawn largest first (by mask
pixel count, then annotation id), so where instances overlap the smaller one stays on
top. Crowd annotations (RLE) are drawn like any other instance.

Each map is written through a temporary file and a rename, and a manifest
(coco_object_<split>_manifest.json) is written last: a folder with the manifest is complete.

The maps are meant to sit beside the COCO-Stuff 164k label maps, as in the SCLIP /
GroupViT layout: --out <data root>/coco_stuff164k/annotations/val2017.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import file_sha256
from silc_eval.core.io import atomic_write_bytes, atomic_write_json

SUFFIX = "_instanceTrainIds.png"
NUM_THING_CATEGORIES = 80


def manifest_path(out: Path, split: str) -> Path:
    """Return the path of the manifest that marks a finished COCO-Object split in out."""
    return Path(out) / f"coco_object_{split}_manifest.json"


def category_labels(category_ids) -> dict[int, int]:
    """Return {COCO category id: label}, labels 1.. in ascending id order (0 is background)."""
    return {cat_id: index + 1 for index, cat_id in enumerate(sorted(category_ids))}


def load_instances(path: Path):
    """Return a pycocotools COCO object for an instances JSON; a missing or malformed file is a UserError."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise UserError(f"COCO instance annotations not found: expected {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            return COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise UserError(f"{path} is not a COCO instances file ({type(exc).__name__}: {exc})") from None


def render_label_map(coco, image_id: int, labels: dict[int, int]) -> np.ndarray:
    """Return the uint8 (height, width) COCO-Object label map of one image."""
    info = coco.imgs[image_id]
    label_map = np.zeros((info["height"], info["width"]), dtype=np.uint8)
    drawn = []
    for ann in coco.imgToAnns.get(image_id, []):
        if not ann.get("segmentation"):
            continue
        if ann["category_id"] not in labels:
            raise UserError(f"annotation {ann.get('id')} of image {image_id} has category id "
                            f"{ann['category_id']}, which the file's categories do not list")
        mask = coco.annToMask(ann).astype(bool)
        drawn.append((-int(mask.sum()), ann.get("id", 0), mask, labels[ann["category_id"]]))
    for _, _, mask, label in sorted(drawn, key=lambda item: item[:2]):
        label_map[mask] = label
    return label_map


def _png_bytes(label_map: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(label_map, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def prepare_coco_object(coco_dir: Path, out: Path, split: str = "val2017", progress: bool = False) -> int:
    """Write <out>/<stem>_instanceTrainIds.png for every image of COCO's instances_<split>.json; returns the count."""
    source = Path(coco_dir) / "annotations" / f"instances_{split}.json"
    coco = load_instances(source)
    category_ids = sorted(coco.cats)
    if len(category_ids) != NUM_THING_CATEGORIES:
        raise UserError(f"{source} lists {len(category_ids)} categories; expected the "
                        f"{NUM_THING_CATEGORIES} COCO thing categories")
    labels = category_labels(category_ids)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path(out, split).unlink(missing_ok=True)  # a manifest only ever describes a finished run
    image_ids = sorted(coco.imgs)
    iterator = image_ids
    if progress:
        from tqdm import tqdm

        iterator = tqdm(image_ids, desc=f"COCO-Object {split}", unit="image", file=sys.stderr)
    for image_id in iterator:
        stem = Path(coco.imgs[image_id]["file_name"]).stem
        atomic_write_bytes(out / f"{stem}{SUFFIX}", _png_bytes(render_label_map(coco, image_id, labels)))
    atomic_write_json(manifest_path(out, split), {
        "split": split, "images": len(image_ids), "suffix": SUFFIX, "source": source.name,
        "source_sha256": file_sha256(source),
        "labels": {str(cat_id): {"label": labels[cat_id], "name": coco.cats[cat_id].get("name", "")}
                   for cat_id in category_ids},
        "background": 0, "overlaps": "drawn largest first, smaller instances on top; crowd regions included",
    })
    return len(image_ids)
