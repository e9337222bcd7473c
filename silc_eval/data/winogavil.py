"""Reader for WinoGAViL (Bitton et al. 2022), the association set DataComp scores: per instance a cue word, 5 to 12
candidate images and the candidates humans associated with the cue.

Layout of the WinoGAViL-experiments release: <root>/winogavil_dataset.csv (columns candidates and associations
as JSON lists of image names, cue, num_candidates, ...) and <root>/images/<name>.png (its download-images.py
writes them there).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

import torch

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import fingerprint_files
from silc_eval.data.caption_selection import InstanceImages
from silc_eval.data.readers import IMAGE_SUFFIXES

ANNOTATION_FILE = "winogavil_dataset.csv"
EXPECTED = (f"{ANNOTATION_FILE} with columns candidates and associations (JSON lists of image names) and cue, "
            f"beside images/<name>.png")


class Associations(InstanceImages):
    """WinoGAViL instances; items are (candidate images stacked (C, 3, H, W), cue, associated (C,) bool).

    Attributes: image_files (each image once), instance_images (per instance its candidates' indices into
    image_files), cues, associated (per instance a list of bools, one per candidate), fingerprint.
    """

    def __init__(self, root: Path, transform: Callable | None = None):
        root = Path(root)
        annotation_file, images = root / ANNOTATION_FILE, root / "images"
        if not annotation_file.is_file():
            raise UserError(f"WinoGAViL annotations not found: expected {EXPECTED} under {root}")
        try:
            with open(annotation_file, newline="", encoding="utf-8") as handle:
                rows = [(json.loads(r["candidates"]), r["cue"], json.loads(r["associations"]))
                        for r in csv.DictReader(handle)]
        except (KeyError, ValueError, TypeError):
            raise UserError(f"{annotation_file} is not WinoGAViL's dataset file: expected {EXPECTED}") from None
        if not rows:
            raise UserError(f"{annotation_file} lists no instances")
        bad = next((n for n, (candidates, _, associations) in enumerate(rows)
                    if not associations or not set(associations) <= set(candidates)), None)
        if bad is not None:
            raise UserError(f"{annotation_file}: instance {bad} has associations outside its candidates (or none); "
                            f"expected a non-empty subset of the candidates")
        names = list(dict.fromkeys(name for candidates, _, _ in rows for name in candidates))
        self.image_files = [_image_file(images, name) for name in names]
        missing = [p for p in self.image_files if not p.is_file()]
        if missing:
            raise UserError(f"{len(missing)} WinoGAViL images are missing, e.g. {missing[0]}; expected them under "
                            f"{images}/<name>.png")
        index = {name: i for i, name in enumerate(names)}
        self.instance_images = [[index[name] for name in candidates] for candidates, _, _ in rows]
        self.cues = [str(cue) for _, cue, _ in rows]
        self.associated = [[name in set(associations) for name in candidates] for candidates, _, associations in rows]
        self.transform = transform
        self.fingerprint = fingerprint_files(self.image_files + [annotation_file])

    def __getitem__(self, index: int):
        return self.images_of(index), self.cues[index], torch.tensor(self.associated[index])


def _image_file(images: Path, name: str) -> Path:
    """Return images/<name>.png, or the file of that stem with another image suffix when that exists."""
    path = images / f"{name}.png"
    if path.is_file():
        return path
    return next((images / f"{name}{s}" for s in sorted(IMAGE_SUFFIXES) if (images / f"{name}{s}").is_file()), path)
