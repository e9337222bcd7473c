"""Pascal Context-459 label maps (`<id>.tif`) from the full Pascal Context annotations (`trainval/<id>.mat`).

The full release (trainval.tar.gz of the Pascal Context site) holds one MATLAB file per VOC2010
trainval image whose `LabelMap` gives every pixel a class 1..459 (the order of its labels.txt;
0 would be unlabelled). The map written is LabelMap - 1 as 16-bit TIFF (classes 0..458,
benchmarks/classes/catseg/pc459.txt) with 65535 for 0, the layout SAN and CAT-Seg evaluate:
VOCdevkit/VOC2010/annotations_detectron2/pc459_val/<id>.tif. The images are VOC2010's
JPEGImages, unchanged. Which images: one id per line of a split file, by default
ImageSets/SegmentationContext/val.txt (mmseg's Pascal Context val list, 5105 ids, which the
PC-59 / PC-60 benchmarks read too; CAT-Seg's own datasets/pascalcontext_val.txt lists 5104).

Reading .mat files needs scipy (installed with scikit-learn or mmsegmentation; not a
dependency of silc-eval itself). Each map is written through a temporary file and a rename;
the manifest (pc459_val_manifest.json in out) is written last: a folder with it is complete.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import file_sha256
from silc_eval.core.io import atomic_write_bytes, atomic_write_json
from silc_eval.core.labels import WIDE_IGNORE_INDEX

NUM_CLASSES = 459
SUFFIX = ".tif"
DEFAULT_SPLIT_FILE = Path("ImageSets") / "SegmentationContext" / "val.txt"
DEFAULT_OUT = Path("annotations_detectron2") / "pc459_val"
MATS = "trainval"
RAW_LAYOUT = ("VOCdevkit/VOC2010/trainval/<id>.mat (the full Pascal Context annotations, trainval.tar.gz, "
              "unpacked into VOC2010) and a split file of ids")


def manifest_path(out: Path) -> Path:
    """Return the path of the manifest that marks a finished PC-459 folder."""
    return Path(out) / "pc459_val_manifest.json"


def _loadmat():
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError("data prepare pc459 reads MATLAB files with scipy (pip install scipy); expected "
                        "'import scipy.io' to work") from None
    return loadmat


def read_ids(split_file: Path) -> list[str]:
    """Return the image ids of a split file (one per line, blank lines skipped, file order kept)."""
    if not split_file.is_file():
        raise UserError(f"split file not found: expected {split_file} (one VOC2010 image id per line, e.g. "
                        f"2008_000002)")
    ids = [line.strip() for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise UserError(f"{split_file} lists no image id; expected one VOC2010 image id per line")
    return ids


def label_map(label_map_459: np.ndarray, where: Path) -> np.ndarray:
    """Return the uint16 map (LabelMap - 1, 65535 where LabelMap is 0) of a 2-D LabelMap with values 0..459."""
    raw = np.asarray(label_map_459)
    if raw.ndim != 2 or raw.dtype.kind not in "uif" or raw.size == 0:
        raise UserError(f"{where}: LabelMap is a {raw.dtype} array of shape {raw.shape}; expected a 2-D map of "
                        f"class ids 1..{NUM_CLASSES}")
    if raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw)):
        raise UserError(f"{where}: LabelMap holds fractional values; expected class ids 1..{NUM_CLASSES}")
    values = raw.astype(np.int64)
    bad = np.unique(values[(values < 0) | (values > NUM_CLASSES)])
    if bad.size:
        raise UserError(f"{where}: LabelMap has values {', '.join(map(str, bad[:10].tolist()))}; expected class "
                        f"ids 1..{NUM_CLASSES} (0: unlabelled)")
    out = np.full(values.shape, WIDE_IGNORE_INDEX, dtype=np.uint16)
    labelled = values > 0
    out[labelled] = (values[labelled] - 1).astype(np.uint16)
    return out


def read_label_map(path: Path, loadmat) -> np.ndarray:
    """Return the uint16 PC-459 map of one trainval/<id>.mat; an unreadable file is a UserError naming it."""
    try:
        data = loadmat(str(path))
    except (OSError, ValueError, NotImplementedError, TypeError) as exc:
        raise UserError(f"cannot read {path} as a MATLAB file ({type(exc).__name__}: {exc}); expected the "
                        f"Pascal Context release's trainval/<id>.mat") from None
    if "LabelMap" not in data:
        keys = ", ".join(sorted(k for k in data if not k.startswith("__"))) or "none"
        raise UserError(f"{path} has no LabelMap (variables: {keys}); expected the Pascal Context release's "
                        f"trainval/<id>.mat")
    return label_map(data["LabelMap"], path)


def _tiff_bytes(label: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="TIFF")
    return buffer.getvalue()


def prepare_pc459(voc2010: Path, out: Path | None = None, split_file: Path | None = None,
                  progress: bool = False) -> int:
    """Write <out>/<id>.tif for every id of split_file (default: the Pascal Context val list) from voc2010's
    trainval/<id>.mat; out defaults to voc2010/annotations_detectron2/pc459_val. Returns the count."""
    voc2010 = Path(voc2010)
    mats = voc2010 / MATS
    if not mats.is_dir():
        raise UserError(f"Pascal Context annotations not found: expected {mats} (layout: {RAW_LAYOUT})")
    split_file = Path(split_file) if split_file is not None else voc2010 / DEFAULT_SPLIT_FILE
    ids = read_ids(split_file)
    missing = [i for i in ids if not (mats / f"{i}.mat").is_file()]
    if missing:
        raise UserError(f"{mats / (missing[0] + '.mat')} not found ({len(missing)} of the {len(ids)} ids of "
                        f"{split_file} lack their .mat); expected {RAW_LAYOUT}")
    loadmat = _loadmat()
    out = Path(out) if out is not None else voc2010 / DEFAULT_OUT
    manifest_path(out).unlink(missing_ok=True)  # a manifest only ever describes a finished run
    iterator = ids
    if progress:
        from tqdm import tqdm

        iterator = tqdm(ids, desc="Pascal Context-459", unit="image", file=sys.stderr)
    unlabelled = 0
    for image_id in iterator:
        label = read_label_map(mats / f"{image_id}.mat", loadmat)
        unlabelled += int((label == WIDE_IGNORE_INDEX).sum())
        atomic_write_bytes(out / f"{image_id}{SUFFIX}", _tiff_bytes(label))
    atomic_write_json(manifest_path(out), {
        "images": len(ids), "split_file": str(split_file), "split_file_sha256": file_sha256(split_file),
        "source": str(mats), "suffix": SUFFIX, "num_classes": NUM_CLASSES, "ignore": WIDE_IGNORE_INDEX,
        "unlabelled_pixels": unlabelled, "labels": "LabelMap - 1 (0..458); LabelMap 0 -> 65535",
    })
    return len(ids)
