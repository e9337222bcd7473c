"""COCO's own captions JSON (annotations/captions_<split>.json), read through pycocotools."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Callable

from silc_eval.core.errors import UserError
from silc_eval.data.readers import CaptionRetrieval


def load_coco(annotation_file: Path):
    """Return a pycocotools COCO index of annotation_file (its progress prints silenced); bad files are UserErrors."""
    from pycocotools.coco import COCO

    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise UserError(f"COCO captions file not found: expected {annotation_file}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(annotation_file))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise UserError(f"{annotation_file} is not a COCO captions file ({type(exc).__name__}): expected "
                        f'{{"images": [{{"id", "file_name"}}], "annotations": [{{"image_id", "caption"}}]}}') from None


def coco_image_captions(coco, images_root: Path) -> tuple[list[Path], list[list[str]]]:
    """Return (image files, captions per image) of a COCO index, images in ascending id order.

    The order is torchvision's CocoCaptions order (sorted image ids), which clip-benchmark uses;
    captions of an image keep the annotation file's order.
    """
    ids = sorted(coco.imgs)
    files = [Path(images_root) / coco.imgs[i]["file_name"] for i in ids]
    captions = [[ann["caption"] for ann in coco.imgToAnns.get(i, [])] for i in ids]
    return files, captions


def coco_captions_retrieval(annotation_file: Path, images_root: Path,
                            transform: Callable | None = None) -> CaptionRetrieval:
    """Return the retrieval dataset of a COCO captions JSON: every image it lists with all its captions."""
    coco = load_coco(annotation_file)
    files, captions = coco_image_captions(coco, images_root)
    return CaptionRetrieval(files, captions, Path(annotation_file), f"{images_root}/<file_name>", transform)
