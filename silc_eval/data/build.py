"""Build a benchmark's dataset from its YAML declaration and the data roots."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from silc_eval.data.metadata import is_packaged, load_names
from silc_eval.data.readers import ImageFolderClassification, KarpathyRetrieval
from silc_eval.data.segmentation import segmentation_dataset, split_paths, split_view
from silc_eval.errors import UserError


def expected_paths(dataset: dict) -> list[str]:
    """Return the paths (relative to the data root) a dataset declaration reads for evaluation.

    For `mmseg` declarations the optional `train` split is left out (see train_paths).
    """
    if dataset["format"] == "mmseg":
        return split_paths(dataset)
    keys = {"imagefolder": ("root", "classnames", "templates"), "karpathy": ("annotations", "images")}
    return [dataset[k] for k in keys[dataset["format"]] if k in dataset and not is_packaged(dataset[k])]


def train_paths(dataset: dict) -> list[str]:
    """Return the paths (relative to the data root) a declaration's train split reads; [] without one."""
    if dataset["format"] == "imagefolder" and "train_root" in dataset:
        return [dataset["train_root"]]
    if dataset["format"] != "mmseg" or "train" not in dataset:
        return []
    return split_paths(split_view(dataset, "train"))


def synthscenes_parts(dataset: dict) -> list[str]:
    """Return the SynthScenes parts a dataset declaration needs (synthscenes/<part>/...), its train split included."""
    return sorted({Path(p).parts[1] for p in expected_paths(dataset) + train_paths(dataset)})


def dataset_root(dataset: dict, data_root: Path | None, synthscenes_root: Path | None) -> Path:
    """Return the folder a dataset's relative paths are resolved against, generating SynthScenes if needed."""
    if dataset["source"] == "synthscenes":
        from silc_eval.data.synthscenes import ensure_synthscenes

        return ensure_synthscenes(synthscenes_root, parts=synthscenes_parts(dataset))
    if data_root is None:
        raise UserError(f"dataset {dataset['name']} reads real data: pass --data-root DIR with "
                        f"{', '.join(expected_paths(dataset))} under it")
    missing = [p for p in expected_paths(dataset) if not (Path(data_root) / p).exists()]
    if missing:
        raise UserError(f"dataset {dataset['name']} not found under {data_root}: expected "
                        f"{', '.join(str(Path(data_root) / p) for p in missing)}")
    return Path(data_root)


def build_dataset(dataset: dict, root: Path, transform: Callable | None, split: str = "val"):
    """Return the torch Dataset for a declaration, reading files under root.

    split ('val' or 'train') applies to `mmseg` declarations and to `imagefolder` ones with a
    `train_root` (the training split of linear probes). `mmseg` items are raw pixels and labels
    (the segmentation tasks resize themselves), so transform is unused there.
    """
    fmt = dataset["format"]
    if fmt == "mmseg":
        return segmentation_dataset(dataset, root, split=split)
    if fmt == "imagefolder":
        if split == "train" and "train_root" not in dataset:
            raise UserError(f"dataset {dataset['name']} has no training split: its declaration needs train_root")
        classnames = load_names("classnames", dataset["classnames"], root)
        templates = load_names("templates", dataset["templates"], root) if "templates" in dataset else None
        files = [root / dataset[k] for k in ("classnames", "templates") if k in dataset and not is_packaged(dataset[k])]
        folder = dataset["train_root"] if split == "train" else dataset["root"]
        built = ImageFolderClassification(root / folder, classnames, templates, transform=transform,
                                          metadata_files=files)
        built.declaration, built.root, built.split = dataset, Path(root), split
        return built
    if fmt == "karpathy":
        return KarpathyRetrieval(root / dataset["annotations"], root / dataset["images"],
                                 split=dataset.get("split", "test"), transform=transform)
    raise UserError(f"unknown dataset format '{fmt}'")
