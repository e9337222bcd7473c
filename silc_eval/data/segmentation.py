"""Semantic segmentation datasets in mmseg 1.x's on-disk layouts (dataset format `mmseg`).

A declaration names an image folder and an annotation folder under a root; the label
map of images/REL/STEM<image_suffix> is annotations/REL/STEM<annotation_suffix>.
Samples come from a split file (one STEM per line, file order kept, as mmseg does with
`ann_file`) or, without one, from every image below the folder, sorted by relative path
(mmseg sorts by path too). Annotation PNGs are read as stored: an L-mode map gives its
grey values and a P-mode (palette) map such as VOC's gives the palette index, never the
colour; 16-bit maps (TIFF or PNG, as SAN / CAT-Seg store ADE-847 and PC-459) give their values.
A label set of more than 255 classes ignores 65535 instead of 255, which is then a class
(core/labels.py). Items are the raw image and its label map at the original resolution; the
segmentation tasks do their own resizing. See benchmarks/PROTOCOLS.md sections 4.6 and 5.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import fingerprint_files
from silc_eval.core.labels import IGNORE_INDEX, ignore_index_for
from silc_eval.core.paths import benchmarks_dir
from silc_eval.core.schema import check_keys
from silc_eval.data.metadata import is_packaged, load_names
from silc_eval.data.readers import load_rgb

BENCHMARKS_PREFIX = "benchmarks:"
DEFAULT_TEMPLATES = "clip_benchmark:imagenet1k"
DEFAULT_IMAGE_SUFFIX = ".jpg"
DEFAULT_ANNOTATION_SUFFIX = ".png"
# Keys of an `mmseg` declaration besides name, source and format (the format table in formats.py checks them).
REQUIRED_KEYS = {"images", "annotations", "num_classes", "classes"}
OPTIONAL_KEYS = {"split_file", "image_suffix", "annotation_suffix", "templates", "reduce_zero_label", "train",
                 "background_name"}
# Keys of the optional `train` mapping; what it leaves out is taken from the top level.
TRAIN_REQUIRED = {"images", "annotations"}
TRAIN_OPTIONAL = {"split_file", "classes", "num_classes", "image_suffix", "annotation_suffix", "reduce_zero_label"}


LABEL_MEMO_BYTES = 512 * 2 ** 20


class FileMemo:
    """Values derived from files, keyed by each file's identity (path, byte size, modification time) and the
    settings that derived them; the least recently used go beyond max_bytes. Every model and task of a run
    reads a label map once; a file that changes on disk is read again."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used, self.items = max_bytes, 0, OrderedDict()

    @staticmethod
    def key(path: Path, *settings) -> tuple:
        """Return the memo key of path as it is on disk now, with settings."""
        stat = os.stat(path)
        return (str(path), stat.st_size, stat.st_mtime_ns, *settings)

    def get(self, key: tuple):
        """Return the value stored under key (None when absent), marking it recently used."""
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: tuple, value, nbytes: int) -> None:
        """Store value (nbytes large) under key, dropping the least recently used beyond max_bytes."""
        if nbytes > self.max_bytes:
            return
        self.items[key] = (value, nbytes)
        self.used += nbytes
        while self.used > self.max_bytes:
            _, (_, dropped) = self.items.popitem(last=False)
            self.used -= dropped


_LABELS = FileMemo(LABEL_MEMO_BYTES)  # checked label maps, stored as int32
_IMAGE_SIZES = FileMemo(LABEL_MEMO_BYTES)  # (width, height) from an image's header


def resolve_class_file(value: str, root: Path) -> Path:
    """Return the path of a class file: 'benchmarks:<rel>' under benchmarks_dir(), anything else under root."""
    value = str(value)
    if value.startswith(BENCHMARKS_PREFIX):
        return benchmarks_dir() / value[len(BENCHMARKS_PREFIX):]
    return Path(root) / value


def load_class_file(value: str, root: Path) -> list[list[str]]:
    """Return the classes of a class file, one list of names per line (line i = class id i).

    A line holds comma-separated names: the first is the display name, the others its
    synonyms (or, on a background line, the background words). Whitespace around names
    is dropped; trailing blank lines are allowed, blank lines inside the file are not.
    """
    path = resolve_class_file(value, root)
    if not path.is_file():
        raise UserError(f"class file not found: expected {path} (one line of comma-separated names per class id)")
    classes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").rstrip().splitlines(), start=1):
        names = [name.strip() for name in line.split(",")]
        if not all(names):
            raise UserError(f"{path} line {number} has an empty class name; expected comma-separated names "
                            f"on every line, one line per class id")
        classes.append(names)
    if not classes:
        raise UserError(f"{path} is empty; expected one line of comma-separated names per class id")
    return classes


def display_names(classes: list[list[str]], where: str = "the class file") -> list[str]:
    """Return one distinct display name per class: its first name, or 'first (second)' where several classes share
    a first name (ADE-847 has three 'bag' senses); a class without a second name keeps its first.

    Raises UserError when two classes still share a display name.
    """
    firsts = [names[0] for names in classes]
    shared = {name for name in firsts if firsts.count(name) > 1}
    shown = [f"{names[0]} ({names[1]})" if names[0] in shared and len(names) > 1 else names[0] for names in classes]
    repeated = sorted({name for name in shown if shown.count(name) > 1})
    if repeated:
        lines = [i + 1 for i, name in enumerate(shown) if name == repeated[0]]
        raise UserError(f"{where}: lines {', '.join(map(str, lines))} would all be shown as class '{repeated[0]}'; "
                        f"expected distinct first names, or distinct second names where the first is shared")
    return shown


def _positive_int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}: {what} must be a positive integer, got {value!r}")
    return value


def check_declaration(dataset: dict, where: str | Path) -> None:
    """Raise a UserError naming `where` (the benchmark file) for a malformed `mmseg` declaration; returns None.

    The top-level keys are checked by the format table (formats.py); this checks the `train`
    mapping's keys and the types of num_classes and reduce_zero_label.
    """
    _positive_int(dataset["num_classes"], "dataset.num_classes", str(where))
    if not isinstance(dataset.get("reduce_zero_label", False), bool):
        raise UserError(f"{where}: dataset.reduce_zero_label must be true or false")
    if "train" not in dataset:
        return
    train = dataset["train"]
    if not isinstance(train, dict):
        raise UserError(f"{where}: dataset.train must be a mapping with keys images, annotations and optionally "
                        f"{', '.join(sorted(TRAIN_OPTIONAL))}")
    check_keys(where, "dataset.train", train, TRAIN_REQUIRED, TRAIN_OPTIONAL)
    if ("classes" in train) != ("num_classes" in train):
        raise UserError(f"{where}: dataset.train needs classes and num_classes together (or neither, to reuse "
                        f"the top-level ones)")
    if "num_classes" in train:
        _positive_int(train["num_classes"], "dataset.train.num_classes", str(where))
    if not isinstance(train.get("reduce_zero_label", False), bool):
        raise UserError(f"{where}: dataset.train.reduce_zero_label must be true or false")


def reduce_zero_label(label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Return label with 0 -> ignore_index and every other class shifted down by one (mmseg's convention)."""
    label = label.long()
    reduced = label - 1
    reduced[(label == 0) | (label == ignore_index)] = ignore_index
    return reduced


def split_view(dataset: dict, split: str = "eval") -> dict:
    """Return the declaration as seen by one split: for 'train', the `train` mapping over the top-level keys."""
    if split == "eval":
        return dict(dataset)
    if split != "train":
        raise UserError(f"dataset {dataset['name']}: unknown split '{split}'; expected eval or train")
    if "train" not in dataset:
        raise UserError(f"dataset {dataset['name']} declares no training split: add a 'train:' mapping "
                        f"(images, annotations, optionally split_file, classes, num_classes) under 'dataset:' "
                        f"in its benchmark file")
    view = {k: v for k, v in dataset.items() if k not in ("train", "split_file")}
    view.update(dataset["train"])
    return view


def split_paths(dataset: dict) -> list[str]:
    """Return the paths under the data root that one split view of a declaration reads."""
    paths = [dataset["images"], dataset["annotations"]]
    paths += [dataset["split_file"]] if "split_file" in dataset else []
    if not str(dataset["classes"]).startswith(BENCHMARKS_PREFIX):
        paths.append(dataset["classes"])
    if "templates" in dataset and not is_packaged(dataset["templates"]):
        paths.append(dataset["templates"])
    return paths


def _visible_files(folder: Path, suffix: str) -> list[Path]:
    return sorted((p for p in folder.rglob(f"*{suffix}") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def list_samples(images: Path, annotations: Path, image_suffix: str, annotation_suffix: str,
                 split_file: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Return (image paths, annotation paths) in dataset order; every image must have its annotation."""
    layout = (f"{images}/<name>{image_suffix} with its label map at {annotations}/<name>{annotation_suffix}, "
              f"<name> possibly in sub-folders")
    if not images.is_dir():
        raise UserError(f"image folder not found: expected {images} (layout: {layout})")
    if split_file is not None:
        if not split_file.is_file():
            raise UserError(f"split file not found: expected {split_file} (one image name without suffix per line)")
        stems = [s.strip() for s in split_file.read_text(encoding="utf-8").splitlines() if s.strip()]
        image_paths = [images / f"{stem}{image_suffix}" for stem in stems]
        missing = [p for p in image_paths if not p.is_file()]
        if missing:
            raise UserError(f"{len(missing)} images listed in {split_file} are missing, e.g. {missing[0]}; "
                            f"expected {layout}")
        stems_of = dict(zip(image_paths, stems))
    else:
        image_paths = _visible_files(images, image_suffix)
        stems_of = {p: p.relative_to(images).as_posix()[:-len(image_suffix)] for p in image_paths}
    if not image_paths:
        raise UserError(f"no images ending in '{image_suffix}' under {images}; expected {layout}")
    annotation_paths = [annotations / f"{stems_of[p]}{annotation_suffix}" for p in image_paths]
    missing = [(i, a) for i, a in zip(image_paths, annotation_paths) if not a.is_file()]
    if missing:
        raise UserError(f"annotation {missing[0][1]} not found for image {missing[0][0]} ({len(missing)} of "
                        f"{len(image_paths)} images lack one); expected {layout}")
    return image_paths, annotation_paths


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


class SegmentationDataset(Dataset):
    """Images with per-pixel class labels; item i is (uint8 image (3, H, W) RGB, int64 label (H, W), i).

    Labels are in [0, num_classes) or ignore_index (255; 65535 above 255 classes), with
    reduce_zero_label already applied; a label map with other values, or of another size than
    its image, is a UserError naming the file.
    """

    ignore_index = IGNORE_INDEX  # the default; each dataset sets its own from its class count

    def __init__(self, image_paths: list[Path], annotation_paths: list[Path], classes: list[list[str]],
                 templates: list[str], reduce_zero_label: bool = False, name: str = "segmentation",
                 fingerprint: str = "", background_name: str | None = None):
        self.name = name
        self.image_paths, self.annotation_paths = list(image_paths), list(annotation_paths)
        self.classes = [list(names) for names in classes]
        # display names: the first name of each line (made distinct where first names repeat), except class 0
        # when the declaration names its background (SCLIP's VOC21 / COCO-Object line 0 lists stuff words)
        self.class_names = display_names(self.classes, f"dataset {name}")
        if background_name:
            self.class_names[0] = background_name
        self.num_classes = len(self.classes)
        self.ignore_index = ignore_index_for(self.num_classes)
        self.templates = list(templates)
        self.reduce_zero_label = reduce_zero_label
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.image_paths)

    def read_label(self, index: int, size: tuple[int, int]) -> torch.Tensor:
        """Return the checked int64 (H, W) label of sample index; size is its image's (width, height)."""
        path = self.annotation_paths[index]
        try:
            key = FileMemo.key(path, size, self.num_classes, self.ignore_index, self.reduce_zero_label)
        except OSError as exc:
            raise UserError(f"cannot read annotation {path}: {exc}") from None
        stored = _LABELS.get(key)
        if stored is None:
            label = self._decode_label(index, size).to(torch.int32)
            _LABELS.put(key, label, label.numel() * label.element_size())
            return label.long()
        return stored[0].long()

    def _decode_label(self, index: int, size: tuple[int, int]) -> torch.Tensor:
        path = self.annotation_paths[index]
        try:
            with Image.open(path) as img:
                raw = np.array(img)
        except OSError as exc:
            raise UserError(f"cannot read annotation {path}: {exc}") from None
        if raw.ndim != 2:
            raise UserError(f"{path} has {raw.shape[-1]} channels; expected a single-channel (L or P mode) "
                            f"label map of class ids")
        if (raw.shape[1], raw.shape[0]) != size:
            raise UserError(f"annotation {path} is {raw.shape[1]}x{raw.shape[0]} but its image "
                            f"{self.image_paths[index]} is {size[0]}x{size[1]}; expected the same size")
        label = torch.from_numpy(raw.astype(np.int64))
        if self.reduce_zero_label:
            label = reduce_zero_label(label, self.ignore_index)
        values = torch.unique(label)
        bad = values[((values < 0) | (values >= self.num_classes)) & (values != self.ignore_index)]
        if bad.numel():
            shown = ", ".join(str(v) for v in bad[:10].tolist()) + (", ..." if bad.numel() > 10 else "")
            after = " after reduce_zero_label (0 -> 255, others minus 1)" if self.reduce_zero_label else ""
            raise UserError(f"annotation {path} has label values {shown}{after}; expected values in "
                            f"[0, {self.num_classes}) or {self.ignore_index} (ignore)")
        return label

    def label(self, index: int) -> torch.Tensor:
        """Return the checked int64 (H, W) label of sample index without decoding its image (only its header)."""
        path = self.image_paths[index]
        try:
            key = FileMemo.key(path)
            stored = _IMAGE_SIZES.get(key)
            if stored is None:
                with Image.open(path) as img:
                    _IMAGE_SIZES.put(key, img.size, 64)
                    stored = (img.size, 64)
        except OSError as exc:
            raise UserError(f"cannot read image {path}: {exc}") from None
        return self.read_label(index, stored[0])

    def __getitem__(self, index: int):
        """Return (uint8 RGB image (3, H, W), int64 label (H, W), index) of sample index."""
        image = load_rgb(self.image_paths[index])
        label = self.read_label(index, image.size)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        return pixels, label, index

    @staticmethod
    def collate(batch):
        """Return (list of images, list of labels, int64 tensor of indices): images differ in size, so no stacking."""
        images, labels, indices = zip(*batch)
        return list(images), list(labels), torch.tensor(indices, dtype=torch.int64)


def segmentation_dataset(dataset: dict, root: Path, split: str = "eval",
                         where: str | Path | None = None) -> SegmentationDataset:
    """Return the SegmentationDataset of an `mmseg` declaration's split ('eval' or 'train'), reading under root.

    where names the benchmark file in error messages (default: the dataset's name).
    """
    root = Path(root)
    check_declaration(dataset, where or f"dataset {dataset.get('name', '?')}")
    view = split_view(dataset, split)
    classes_file = resolve_class_file(view["classes"], root)
    classes = load_class_file(view["classes"], root)
    display_names(classes, str(classes_file))  # a class file whose classes cannot be told apart is refused here
    if len(classes) != view["num_classes"]:
        raise UserError(f"class file {classes_file} has {len(classes)} lines but dataset {dataset['name']} "
                        f"declares num_classes: {view['num_classes']}; expected one line per class id")
    templates = load_names("templates", view.get("templates", DEFAULT_TEMPLATES), root)
    split_file = root / view["split_file"] if "split_file" in view else None
    image_paths, annotation_paths = list_samples(
        root / view["images"], root / view["annotations"], view.get("image_suffix", DEFAULT_IMAGE_SUFFIX),
        view.get("annotation_suffix", DEFAULT_ANNOTATION_SUFFIX), split_file)
    files = fingerprint_files(image_paths + annotation_paths + ([split_file] if split_file else []), root)
    fingerprint = _digest(files, json.dumps(classes), json.dumps(templates),
                          str(view.get("reduce_zero_label", False)))
    return SegmentationDataset(image_paths, annotation_paths, classes, templates,
                               reduce_zero_label=view.get("reduce_zero_label", False),
                               name=f"{dataset['name']}/{split}", fingerprint=fingerprint,
                               background_name=dataset.get("background_name") if split == "eval" else None)
