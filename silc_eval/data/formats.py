"""The dataset formats a benchmark declaration may name: one table, one entry per format.

Each entry says, in one place, which keys a declaration of that format has (required and
optional), how it is checked beyond its keys, which kind of data it holds (classification,
retrieval, segmentation, caption selection or association), which splits it has, which paths (relative to the data root) a
split reads, and how a split is built into a torch Dataset. Splits are `eval` (what a
benchmark scores) and `train` (what a probe or a head is fitted on, where declared).

A reader only reads: the datasets built here carry no declaration and no root, so nothing
downstream can open more files than the evaluate flow built for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from silc_eval.core.errors import UserError
from silc_eval.core.schema import check_keys
from silc_eval.data import clip_benchmark_bridge, segmentation, wds
from silc_eval.data.caption_selection import sugar_crepe_selection, winoground_selection
from silc_eval.data.coco_captions import coco_captions_retrieval
from silc_eval.data.metadata import is_packaged, load_names
from silc_eval.data.readers import ImageFolderClassification, KarpathyRetrieval
from silc_eval.data.winogavil import ANNOTATION_FILE as WINOGAVIL_FILE
from silc_eval.data.winogavil import Associations

SOURCES = ("synthscenes", "data-root")
SPLITS = ("eval", "train")
COMMON_KEYS = {"name", "source", "format"}


@dataclass(frozen=True)
class DatasetFormat:
    """One dataset format: its keys, checks, kind, splits, paths and builder."""

    required: frozenset[str]
    optional: frozenset[str]
    kind: Callable[[dict], str]   # classification, retrieval, segmentation, caption_selection, association
    has_split: Callable[[dict, str], bool]
    paths: Callable[[dict, str], list[str]]           # relative to the data root, for one split
    build: Callable[[dict, Path, Callable | None, str], object]
    check: Callable[[dict, str], None] = lambda dataset, where: None


def _names(dataset: dict, root: Path) -> tuple[list[str] | None, list[str] | None, list[Path]]:
    """Return a declaration's class names and templates when it sets them (else None), and their files."""
    classnames = load_names("classnames", dataset["classnames"], root) if "classnames" in dataset else None
    templates = load_names("templates", dataset["templates"], root) if "templates" in dataset else None
    files = [root / dataset[k] for k in ("classnames", "templates") if k in dataset and not is_packaged(dataset[k])]
    return classnames, templates, files


def _metadata_paths(dataset: dict, keys=("classnames", "templates")) -> list[str]:
    return [dataset[k] for k in keys if k in dataset and not is_packaged(dataset[k])]


# ----------------------------------------------------------------------------- imagefolder

def _imagefolder_paths(dataset: dict, split: str) -> list[str]:
    return [dataset["train_root"] if split == "train" else dataset["root"]] + _metadata_paths(dataset)


def _imagefolder_build(dataset: dict, root: Path, transform, split: str):
    classnames, templates, files = _names(dataset, root)
    folder = dataset["train_root"] if split == "train" else dataset["root"]
    return ImageFolderClassification(root / folder, classnames, templates, transform=transform, metadata_files=files)


# ----------------------------------------------------------------------------- clip-benchmark and its webdataset

def _on_disk_split(dataset: dict, split: str) -> str:
    """Return the on-disk split a clip_benchmark/wds declaration reads for 'eval' or 'train'."""
    return dataset.get("train_split", "train") if split == "train" else dataset.get("split", "test")


def _clip_benchmark_paths(dataset: dict, split: str) -> list[str]:
    root = dataset["root"]
    return [root] + [f"{root}/{p}" for p in clip_benchmark_bridge.layout_paths(
        dataset["dataset"], _on_disk_split(dataset, split), dataset.get("language"))]


def _clip_benchmark_build(dataset: dict, root: Path, transform, split: str):
    built = clip_benchmark_bridge.build_clip_benchmark(dataset, root, transform, _on_disk_split(dataset, split))
    classnames, templates, _ = _names(dataset, root)
    if classnames is not None and hasattr(built, "classes"):
        if len(classnames) != len(built.classes):
            raise UserError(f"dataset {dataset['name']}: {len(classnames)} class names declared but "
                            f"clip-benchmark's '{dataset['dataset']}' has {len(built.classes)} classes")
        built.classes = classnames
    if templates is not None and hasattr(built, "templates"):
        built.templates = templates
    return built


def _clip_benchmark_check(dataset: dict, where: str) -> None:
    try:
        clip_benchmark_bridge.check_name(dataset["dataset"])
        if dataset["dataset"] in clip_benchmark_bridge.MULTILINGUAL_DATASETS and "language" in dataset:
            if dataset["language"] not in clip_benchmark_bridge.supported_languages(dataset["dataset"]):
                raise UserError(f"clip-benchmark's '{dataset['dataset']}' has no language {dataset['language']!r}")
        elif "language" in dataset:
            raise UserError(f"dataset.language is for the multilingual datasets "
                            f"({', '.join(clip_benchmark_bridge.MULTILINGUAL_DATASETS)}), not '{dataset['dataset']}'")
        if dataset["dataset"] not in clip_benchmark_bridge.MULTILINGUAL_DATASETS:
            clip_benchmark_bridge.layout_paths(dataset["dataset"], dataset.get("split", "test"))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _wds_build(dataset: dict, root: Path, transform, split: str):
    classnames, templates, _ = _names(dataset, root)
    return wds.WdsClassification(root / dataset["root"], _on_disk_split(dataset, split), transform=transform,
                                 classnames=classnames, templates=templates)


# ----------------------------------------------------------------------------- caption files

def _karpathy_build(dataset: dict, root: Path, transform, split: str):
    return KarpathyRetrieval(root / dataset["annotations"], root / dataset["images"],
                             split=dataset.get("split", "test"), transform=transform)


def _coco_captions_build(dataset: dict, root: Path, transform, split: str):
    return coco_captions_retrieval(root / dataset["annotations"], root / dataset["images"], transform=transform)


def _eval_only(dataset: dict, split: str) -> bool:
    return split == "eval"


FORMATS: dict[str, DatasetFormat] = {
    "imagefolder": DatasetFormat(
        required=frozenset({"root", "classnames"}), optional=frozenset({"templates", "train_root"}),
        kind=lambda d: "classification",
        has_split=lambda d, split: split == "eval" or "train_root" in d,
        paths=_imagefolder_paths, build=_imagefolder_build),
    "karpathy": DatasetFormat(
        required=frozenset({"annotations", "images"}), optional=frozenset({"split"}),
        kind=lambda d: "retrieval", has_split=_eval_only,
        paths=lambda d, split: [d["annotations"], d["images"]], build=_karpathy_build),
    "coco_captions": DatasetFormat(
        required=frozenset({"annotations", "images"}), optional=frozenset(),
        kind=lambda d: "retrieval", has_split=_eval_only,
        paths=lambda d, split: [d["annotations"], d["images"]], build=_coco_captions_build),
    "clip_benchmark": DatasetFormat(
        required=frozenset({"dataset", "root"}),
        optional=frozenset({"split", "train_split", "classnames", "templates", "language"}),
        kind=lambda d: "retrieval" if d["dataset"] in clip_benchmark_bridge.RETRIEVAL_DATASETS else "classification",
        has_split=lambda d, split: split == "eval" or "train_split" in d,
        paths=_clip_benchmark_paths, build=_clip_benchmark_build, check=_clip_benchmark_check),
    "wds": DatasetFormat(
        required=frozenset({"root"}), optional=frozenset({"split", "train_split", "classnames", "templates"}),
        kind=lambda d: "classification",
        has_split=lambda d, split: split == "eval" or "train_split" in d,
        paths=lambda d, split: [f"{d['root']}/{p}" for p in wds.layout_paths(_on_disk_split(d, split))],
        build=_wds_build),
    "sugar_crepe": DatasetFormat(
        required=frozenset({"annotations", "images"}), optional=frozenset(),
        kind=lambda d: "caption_selection", has_split=_eval_only,
        paths=lambda d, split: [d["annotations"], d["images"]],
        build=lambda d, root, transform, split: sugar_crepe_selection(root / d["annotations"], root / d["images"],
                                                                      transform)),
    "winoground": DatasetFormat(
        required=frozenset({"root"}), optional=frozenset(),
        kind=lambda d: "caption_selection", has_split=_eval_only,
        paths=lambda d, split: [f"{d['root']}/examples.jsonl", f"{d['root']}/images"],
        build=lambda d, root, transform, split: winoground_selection(root / d["root"], transform)),
    "winogavil": DatasetFormat(
        required=frozenset({"root"}), optional=frozenset(),
        kind=lambda d: "association", has_split=_eval_only,
        paths=lambda d, split: [f"{d['root']}/{WINOGAVIL_FILE}", f"{d['root']}/images"],
        build=lambda d, root, transform, split: Associations(root / d["root"], transform)),
    "mmseg": DatasetFormat(
        required=frozenset(segmentation.REQUIRED_KEYS), optional=frozenset(segmentation.OPTIONAL_KEYS),
        kind=lambda d: "segmentation", has_split=lambda d, split: split == "eval" or "train" in d,
        paths=lambda d, split: segmentation.split_paths(segmentation.split_view(d, split)),
        build=lambda d, root, transform, split: segmentation.segmentation_dataset(d, root, split),
        check=segmentation.check_declaration),
}


def format_of(dataset: dict, where: str) -> DatasetFormat:
    """Return the DatasetFormat of a declaration after checking its keys, source and format-specific rules."""
    if not isinstance(dataset, dict) or dataset.get("format") not in FORMATS:
        raise UserError(f"{where}: dataset.format must be one of {', '.join(sorted(FORMATS))}")
    fmt = FORMATS[dataset["format"]]
    check_keys(where, "dataset", dataset, COMMON_KEYS | fmt.required, fmt.optional)
    if dataset["source"] not in SOURCES:
        raise UserError(f"{where}: dataset.source must be one of {', '.join(SOURCES)}")
    fmt.check(dataset, where)
    return fmt


def split_paths(dataset: dict, split: str = "eval") -> list[str]:
    """Return the paths (relative to the data root) one split of a declaration reads, without repeats."""
    return list(dict.fromkeys(FORMATS[dataset["format"]].paths(dataset, split)))


def declared_paths(dataset: dict, splits=SPLITS) -> list[str]:
    """Return the paths (relative to the data root) of those splits the declaration has, without repeats."""
    fmt = FORMATS[dataset["format"]]
    return list(dict.fromkeys(p for split in splits if fmt.has_split(dataset, split)
                              for p in split_paths(dataset, split)))


def missing_paths(dataset: dict, data_root: Path, splits=("eval",)) -> list[Path]:
    """Return the absolute paths the given splits of a declaration read that do not exist under data_root."""
    return [Path(data_root) / p for p in declared_paths(dataset, splits) if not (Path(data_root) / p).exists()]


def build_split(dataset: dict, root: Path, transform: Callable | None, split: str = "eval"):
    """Return the torch Dataset of one split ('eval' or 'train') of a declaration, reading under root.

    A declaration without that split is a UserError saying what to add. `mmseg` items are raw
    pixels and labels (the segmentation tasks resize themselves), so transform is unused there.
    """
    if split not in SPLITS:
        raise UserError(f"dataset {dataset['name']}: unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    fmt = FORMATS[dataset["format"]]
    if not fmt.has_split(dataset, split):
        need = {"imagefolder": "train_root", "clip_benchmark": "train_split", "wds": "train_split",
                "mmseg": "a 'train:' mapping (images, annotations, optionally split_file, classes, num_classes)"}
        hint = f": its declaration needs {need[dataset['format']]}" if dataset["format"] in need else ""
        raise UserError(f"dataset {dataset['name']} ({dataset['format']}) has no {split} split{hint}")
    return fmt.build(dataset, Path(root), transform, split)
