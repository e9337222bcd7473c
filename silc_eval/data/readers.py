"""Readers for the on-disk layouts the community uses; each returns a torch Dataset.

A reader only reads: it checks the layout, lists samples, and opens images. It
computes no metric. Every reader exposes `fingerprint` (see data/fingerprint.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import fingerprint_files

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def read_lines(path: Path, what: str) -> list[str]:
    """Return the non-empty stripped lines of a text file; a missing file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: expected {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_rgb(path: Path) -> Image.Image:
    """Return the image at path as RGB; an unreadable file is a UserError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


class ImageFolderClassification(Dataset):
    """An ImageFolder split (root/<class_folder>/<image>) with display class names.

    Class index = position of the folder in sorted order (torchvision's convention,
    and ImageNet's standard order when folders are WordNet ids); classnames[i] is the
    display name of that folder. Items are (transformed image, class index).
    """

    def __init__(self, root: Path, classnames: Sequence[str], templates: Sequence[str] | None = None,
                 transform: Callable | None = None, metadata_files: Sequence[Path] = ()):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"image folder not found: expected {self.root}/<class>/<image files>")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            flat = any(p.suffix.lower() in IMAGE_SUFFIXES for p in self.root.iterdir())
            hint = (" (its images lie directly in it, as in the ILSVRC2012_img_val.tar download: sort them into "
                    "one folder per class first, e.g. with ImageNet's valprep.sh)") if flat else ""
            raise UserError(f"no class folders in {self.root}{hint}: expected {self.root}/<class>/<image files>")
        self.classes = list(classnames)
        if len(self.classes) != len(folders):
            raise UserError(f"{len(self.classes)} class names were given but {self.root} has {len(folders)} class "
                            f"folders; expected one name per folder, in sorted folder order")
        self.templates = list(templates) if templates else ["a photo of a {c}."]
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for index, folder in enumerate(folders):
            files = sorted(p for p in (self.root / folder).iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            self.samples.extend((p, index) for p in files)
            if not files:
                empty.append(folder)
        if not self.samples:
            raise UserError(f"no images under {self.root}/<class>/ (looked for {sorted(IMAGE_SUFFIXES)})")
        if empty:
            shown = ", ".join(str(self.root / f) for f in empty[:3]) + (f" and {len(empty) - 3} more"
                                                                        if len(empty) > 3 else "")
            raise UserError(f"{len(empty)} of {len(folders)} class folders hold no images: {shown}; expected at "
                            f"least one image ({', '.join(sorted(IMAGE_SUFFIXES))}) per class folder (a "
                            f"half-extracted archive?)")
        self.folders = folders
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.fingerprint = fingerprint_files([p for p, _ in self.samples] + [Path(f) for f in metadata_files])

    @property
    def image_paths(self) -> list[Path]:
        """Return the image file of every sample, in dataset order."""
        return [p for p, _ in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform else image), label


class CaptionRetrieval(Dataset):
    """Images with several captions each; items are (transformed image, [caption, ...]).

    The common shape of every retrieval reader (Karpathy JSON, COCO captions JSON,
    clip-benchmark's annotation files): `image_files[i]` has `captions[i]`. Every image must
    exist; a missing one is a UserError naming it and where it was expected (`where`).
    """

    def __init__(self, image_files: Sequence[Path], captions: Sequence[Sequence[str]], annotation_file: Path,
                 where: str, transform: Callable | None = None):
        self.image_files = [Path(p) for p in image_files]
        self.captions = [[str(c).strip() for c in per_image] for per_image in captions]
        if not self.image_files:
            raise UserError(f"{annotation_file} lists no images for this split")
        missing = [p for p in self.image_files if not p.is_file()]
        if missing:
            raise UserError(f"{len(missing)} images listed in {annotation_file} are missing, e.g. {missing[0]}; "
                            f"expected them under {where}")
        empty = [p for p, c in zip(self.image_files, self.captions) if not c]
        if empty:
            raise UserError(f"{annotation_file} gives no caption for {len(empty)} images, e.g. {empty[0].name}; "
                            f"expected at least one per image")
        self.transform = transform
        self.fingerprint = fingerprint_files(self.image_files + [Path(annotation_file)])

    @property
    def image_paths(self) -> list[Path]:
        """Return the image file of every sample, in dataset order."""
        return list(self.image_files)

    def __len__(self) -> int:
        return len(self.image_files)

    def __getitem__(self, index: int):
        image = load_rgb(self.image_files[index])
        return (self.transform(image) if self.transform else image), self.captions[index]


class KarpathyRetrieval(CaptionRetrieval):
    """Images with several captions each, from a Karpathy-style JSON (dataset_coco.json, dataset_flickr30k.json).

    Image file = images_root / entry['filepath'] (COCO: 'val2014' or 'train2014'; absent for
    Flickr) / entry['filename']; captions = entry['sentences'][*]['raw'], stripped.
    Items are (transformed image, [caption, ...]).
    """

    def __init__(self, annotation_file: Path, images_root: Path, split: str = "test",
                 transform: Callable | None = None):
        annotation_file, images_root = Path(annotation_file), Path(images_root)
        if not annotation_file.is_file():
            raise UserError(f"caption file not found: expected Karpathy-style JSON at {annotation_file}")
        try:
            entries = json.loads(annotation_file.read_text(encoding="utf-8"))["images"]
            chosen = [e for e in entries if e.get("split") == split]
            files = [images_root / e.get("filepath", "") / e["filename"] for e in chosen]
            captions = [[s["raw"] for s in e["sentences"]] for e in chosen]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{annotation_file} is not a Karpathy-style caption file: expected "
                            f'{{"images": [{{"filename", "split", "sentences": [{{"raw"}}]}}]}}') from None
        if not files:
            raise UserError(f"{annotation_file} has no images in split '{split}'")
        super().__init__(files, captions, annotation_file, f"{images_root}/<filepath>/<filename>", transform)


def retrieval_collate(batch):
    """Collate (image, captions) pairs into (image batch, list of caption lists), as clip-benchmark does."""
    import torch

    images, captions = zip(*batch)
    return torch.stack(images), list(captions)
