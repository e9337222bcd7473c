"""Readers for image-caption selection sets (compositionality): SugarCrepe and Winoground.

An instance holds I images and C captions; caption j describes image j for j < min(I, C), the
other captions are hard negatives. SugarCrepe: one COCO val2017 image, its caption and one
negative caption per instance, from the set's JSON (RAIVNLab/sugar-crepe data/<set>.json, the
file clip-benchmark reads): {"<id>": {"filename", "caption", "negative_caption"}}. Winoground: two
images and two captions per instance, from the release's examples.jsonl (fields id, caption_0,
caption_1, image_0, image_1) and its images/ folder (<image_k>.png).

Images shared between instances (SugarCrepe reuses COCO images) are listed once in image_files;
instance_images gives each instance's indices into it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import fingerprint_files
from silc_eval.data.readers import IMAGE_SUFFIXES, load_rgb

SUGAR_CREPE_SETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


class ImageFiles(Dataset):
    """Some of a selection set's image files; items are (transformed image, 0), as encode_images reads them."""

    def __init__(self, files: Sequence[Path], transform: Callable | None, fingerprint: str):
        self.files, self.transform, self.fingerprint = list(files), transform, fingerprint

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = load_rgb(self.files[index])
        return (self.transform(image) if self.transform else image), 0


class InstanceImages(Dataset):
    """What every set of instances over shared image files has (caption selection, WinoGAViL's associations):
    image_files (each file once), instance_images (per instance its indices into them), transform, fingerprint."""

    image_files: list[Path]
    instance_images: list[list[int]]
    transform: Callable | None
    fingerprint: str

    def image_dataset(self, indices: Sequence[int]) -> ImageFiles:
        """Return the image files at indices as a dataset whose fingerprint names this set and the indices."""
        digest = hashlib.sha256(f"{self.fingerprint}\0{list(indices)}".encode()).hexdigest()[:16]
        return ImageFiles([self.image_files[i] for i in indices], self.transform, digest)

    def images_of(self, index: int):
        """Return the images of instance index: transformed and stacked (I, 3, H, W), or PIL images without a
        transform."""
        images = [load_rgb(self.image_files[i]) for i in self.instance_images[index]]
        return torch.stack([self.transform(image) for image in images]) if self.transform is not None else images

    def __len__(self) -> int:
        return len(self.instance_images)


class CaptionSelection(InstanceImages):
    """Instances of images and captions to match; items are (images stacked (I, 3, H, W), [caption, ...]).

    Attributes: image_files (each file once), instance_images (per instance its indices into
    image_files, in caption order), captions (per instance), fingerprint.
    """

    def __init__(self, image_files: Sequence[Path], instance_images: Sequence[Sequence[int]],
                 captions: Sequence[Sequence[str]], annotation_file: Path, where: str,
                 transform: Callable | None = None):
        self.image_files = [Path(p) for p in image_files]
        self.instance_images = [list(map(int, i)) for i in instance_images]
        self.captions = [[str(c).strip() for c in per_instance] for per_instance in captions]
        if not self.instance_images:
            raise UserError(f"{annotation_file} lists no instances")
        missing = [p for p in self.image_files if not p.is_file()]
        if missing:
            raise UserError(f"{len(missing)} images listed in {annotation_file} are missing, e.g. {missing[0]}; "
                            f"expected them under {where}")
        short = [n for n, c in enumerate(self.captions) if len(c) < 2 or not all(c)]
        if short:
            raise UserError(f"{annotation_file}: instance {short[0]} needs at least two non-empty captions "
                            f"(the true one and a negative)")
        self.transform = transform
        self.fingerprint = fingerprint_files(self.image_files + [Path(annotation_file)])

    def __getitem__(self, index: int):
        return self.images_of(index), list(self.captions[index])


def _load_json(path: Path, expected: str):
    if not path.is_file():
        raise UserError(f"annotation file not found: expected {path} ({expected})")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{path} is not valid JSON: expected {expected}") from None


def sugar_crepe_selection(annotation_file: Path, images_root: Path, transform: Callable | None = None
                          ) -> CaptionSelection:
    """Return a SugarCrepe set (one image, its caption and a negative caption per instance), in the JSON's key
    order (clip-benchmark's order), from annotation_file and the COCO val2017 images under images_root."""
    annotation_file, images_root = Path(annotation_file), Path(images_root)
    expected = '{"<id>": {"filename", "caption", "negative_caption"}} (SugarCrepe data/<set>.json)'
    entries = _load_json(annotation_file, expected)
    try:
        rows = [(e["filename"], e["caption"], e["negative_caption"]) for e in entries.values()]
    except (AttributeError, KeyError, TypeError):
        raise UserError(f"{annotation_file} is not a SugarCrepe set: expected {expected}") from None
    files = list(dict.fromkeys(filename for filename, _, _ in rows))
    index = {filename: i for i, filename in enumerate(files)}
    return CaptionSelection([images_root / f for f in files], [[index[f]] for f, _, _ in rows],
                            [[caption, negative] for _, caption, negative in rows], annotation_file,
                            f"{images_root}/<filename>", transform)


def _winoground_image(images_root: Path, name: str) -> Path:
    """Return images_root/<name>.png, or the file of that stem with another image suffix when that exists."""
    path = images_root / f"{name}.png"
    if path.is_file():
        return path
    others = [images_root / f"{name}{s}" for s in sorted(IMAGE_SUFFIXES)]
    return next((p for p in others if p.is_file()), path)


def winoground_selection(root: Path, transform: Callable | None = None) -> CaptionSelection:
    """Return Winoground (two images and two captions per instance, caption k describing image k) from
    root/examples.jsonl and root/images/, in the file's order."""
    root = Path(root)
    annotation_file, images_root = root / "examples.jsonl", root / "images"
    expected = 'one {"id", "caption_0", "caption_1", "image_0", "image_1"} object per line (Winoground examples.jsonl)'
    entries = _load_json(annotation_file, expected)
    try:
        names = [(e["image_0"], e["image_1"]) for e in entries]
        captions = [[e["caption_0"], e["caption_1"]] for e in entries]
    except (KeyError, TypeError):
        raise UserError(f"{annotation_file} is not Winoground's examples file: expected {expected}") from None
    files = [_winoground_image(images_root, name) for pair in names for name in pair]
    return CaptionSelection(files, [[2 * n, 2 * n + 1] for n in range(len(names))], captions, annotation_file,
                            f"{images_root}/<image_k>.png", transform)
