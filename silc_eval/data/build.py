"""Build a benchmark's dataset from its YAML declaration and the data roots."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from silc_eval.data import clip_benchmark_bridge, wds
from silc_eval.data.coco_captions import coco_captions_retrieval
from silc_eval.data.metadata import is_packaged, load_names
from silc_eval.data.readers import ImageFolderClassification, KarpathyRetrieval
from silc_eval.data.segmentation import segmentation_dataset, split_paths, split_view
from silc_eval.core.errors import UserError


def expected_paths(dataset: dict) -> list[str]:
    """Return the paths (relative to the data root) a dataset declaration reads for evaluation.

    For `mmseg` declarations the optional `train` split is left out (see train_paths).
    """
    fmt = dataset["format"]
    if fmt == "mmseg":
        return split_paths(dataset)
    if fmt == "clip_benchmark":
        return clip_benchmark_bridge.expected_paths(dataset)
    if fmt == "wds":
        return [f"{dataset['root']}/{p}" for p in wds.layout_paths(dataset.get("split", "test"))]
    keys = {"imagefolder": ("root", "classnames", "templates"), "karpathy": ("annotations", "images"),
            "coco_captions": ("annotations", "images")}
    return [dataset[k] for k in keys[fmt] if k in dataset and not is_packaged(dataset[k])]


def missing_paths(dataset: dict, data_root: Path, include_train: bool = False) -> list[Path]:
    """Return the absolute paths a real-data declaration reads that do not exist under data_root ([] if all do).

    include_train adds the paths of its training split (train_paths), for benchmarks that read one.
    """
    paths = expected_paths(dataset) + (train_paths(dataset) if include_train else [])
    return [Path(data_root) / p for p in dict.fromkeys(paths) if not (Path(data_root) / p).exists()]


def train_paths(dataset: dict) -> list[str]:
    """Return the paths (relative to the data root) a declaration's train split reads; [] without one."""
    if dataset["format"] == "imagefolder" and "train_root" in dataset:
        return [dataset["train_root"]]
    if dataset["format"] == "clip_benchmark" and "train_split" in dataset:
        return clip_benchmark_bridge.expected_paths({**dataset, "split": dataset["train_split"]})
    if dataset["format"] == "wds" and "train_split" in dataset:
        return [f"{dataset['root']}/{p}" for p in wds.layout_paths(dataset["train_split"])]
    if dataset["format"] != "mmseg" or "train" not in dataset:
        return []
    return split_paths(split_view(dataset, "train"))


def synthscenes_parts(dataset: dict) -> list[str]:
    """Return the SynthScenes parts a dataset declaration needs (synthscenes/<part>/...), its train split included."""
    return sorted({Path(p).parts[1] for p in expected_paths(dataset) + train_paths(dataset)})


def dataset_root(dataset: dict, data_root: Path | None, synthscenes_root: Path | None) -> Path:
    """Return the folder a dataset's relative paths are resolved against, generating SynthScenes if needed."""
    if dataset["source"] == "synthscenes":
        from silc_eval.producers.synthscenes import ensure_synthscenes

        return ensure_synthscenes(synthscenes_root, parts=synthscenes_parts(dataset))
    if data_root is None:
        raise UserError(f"dataset {dataset['name']} reads real data: pass --data-root DIR with "
                        f"{', '.join(expected_paths(dataset))} under it")
    missing = missing_paths(dataset, data_root)
    if missing:
        raise UserError(f"dataset {dataset['name']} not found under {data_root}: expected "
                        f"{', '.join(map(str, missing))}")
    return Path(data_root)


def _names(dataset: dict, root: Path) -> tuple[list[str] | None, list[str] | None, list[Path]]:
    """Return a declaration's class names and templates when it sets them (else None), and their files."""
    classnames = load_names("classnames", dataset["classnames"], root) if "classnames" in dataset else None
    templates = load_names("templates", dataset["templates"], root) if "templates" in dataset else None
    files = [root / dataset[k] for k in ("classnames", "templates") if k in dataset and not is_packaged(dataset[k])]
    return classnames, templates, files


def _split_of(dataset: dict, split: str) -> str:
    """Return the on-disk split a clip_benchmark/wds declaration reads for 'val' (evaluation) or 'train'."""
    if split == "train":
        return dataset.get("train_split", "train")
    return dataset.get("split", "test")


def _build(dataset: dict, root: Path, transform: Callable | None, split: str):
    fmt = dataset["format"]
    if fmt == "mmseg":
        return segmentation_dataset(dataset, root, split=split)
    if fmt == "imagefolder":
        if split == "train" and "train_root" not in dataset:
            raise UserError(f"dataset {dataset['name']} has no training split: its declaration needs train_root")
        classnames, templates, files = _names(dataset, root)
        folder = dataset["train_root"] if split == "train" else dataset["root"]
        return ImageFolderClassification(root / folder, classnames, templates, transform=transform,
                                         metadata_files=files)
    if fmt == "clip_benchmark":
        built = clip_benchmark_bridge.build_clip_benchmark(dataset, root, transform, _split_of(dataset, split))
        classnames, templates, _ = _names(dataset, root)
        if classnames is not None and hasattr(built, "classes"):
            if len(classnames) != len(built.classes):
                raise UserError(f"dataset {dataset['name']}: {len(classnames)} class names declared but "
                                f"clip-benchmark's '{dataset['dataset']}' has {len(built.classes)} classes")
            built.classes = classnames
        if templates is not None and hasattr(built, "templates"):
            built.templates = templates
        return built
    if fmt == "wds":
        classnames, templates, _ = _names(dataset, root)
        return wds.WdsClassification(root / dataset["root"], _split_of(dataset, split), transform=transform,
                                     classnames=classnames, templates=templates)
    if split == "train":
        raise UserError(f"dataset {dataset['name']} ({fmt}) has no training split")
    if fmt == "karpathy":
        return KarpathyRetrieval(root / dataset["annotations"], root / dataset["images"],
                                 split=dataset.get("split", "test"), transform=transform)
    if fmt == "coco_captions":
        return coco_captions_retrieval(root / dataset["annotations"], root / dataset["images"], transform=transform)
    raise UserError(f"unknown dataset format '{fmt}'")


def build_dataset(dataset: dict, root: Path, transform: Callable | None, split: str = "val"):
    """Return the torch Dataset for a declaration, reading files under root.

    split ('val' or 'train') applies to `mmseg` declarations, to `imagefolder` ones with a
    `train_root` (the training split of linear probes), and to `clip_benchmark` / `wds` ones
    (their `split`, default 'test', or `train_split`, default 'train'). `mmseg` items are raw
    pixels and labels (the segmentation tasks resize themselves), so transform is unused there.
    The returned dataset carries `.declaration`, `.root` and `.split`.
    """
    built = _build(dataset, Path(root), transform, split)
    built.declaration, built.root, built.split = dataset, Path(root), split
    return built
