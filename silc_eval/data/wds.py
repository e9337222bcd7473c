"""clip-benchmark's webdataset evaluation layout (the `wds_<name>` sets), read with random access.

    <root>/classnames.txt                          one class name per line, in label order
    <root>/zeroshot_classification_templates.txt   one prompt per line, with a {c} placeholder
    <root>/<split>/nshards.txt                     optional: the shards are 0.tar .. <n-1>.tar
    <root>/<split>/*.tar                           samples <key>.{webp,png,jpg,jpeg} + <key>.cls
                                                   (+ <key>.npy: per-sample metadata, DataComp's WILDS and
                                                   fairness sets, e.g. the region of each image)

The shards are indexed once with tarfile (member offsets, labels read from the .cls members),
so items are read by index like any map-style dataset; samples keep webdataset's order.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import fingerprint_files
from silc_eval.data.readers import read_lines

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # clip-benchmark's preference order
KEY_PATTERN = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset: key = path up to the first dot of the name
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


def layout_paths(split: str) -> list[str]:
    """Return the paths (relative to a wds dataset folder) the reader needs for split."""
    return [CLASSNAMES_FILE, split]


def shard_files(folder: Path) -> list[Path]:
    """Return the shards of a split folder: 0..n-1.tar when nshards.txt says n, else every *.tar in natural order."""
    count_file = folder / "nshards.txt"
    if count_file.is_file():
        try:
            count = int(count_file.read_text().strip())
        except ValueError:
            raise UserError(f"{count_file} does not hold a shard count; expected one integer") from None
        shards = [folder / f"{i}.tar" for i in range(count)]
        missing = [p for p in shards if not p.is_file()]
        if missing:
            raise UserError(f"{count_file} announces {count} shards but {missing[0]} is missing; expected "
                            f"{folder}/0.tar .. {count - 1}.tar")
        return shards
    shards = sorted(folder.glob("*.tar"), key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
    if not shards:
        raise UserError(f"no .tar shards in {folder}: expected {folder}/0.tar, 1.tar, ... (clip-benchmark's wds layout)")
    return shards


def index_shard(shard: Path) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Return the samples of one shard in order: (key, {extension: member})."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, "r:") as archive:
            for member in archive:
                match = KEY_PATTERN.match(member.name)
                if member.isfile() and match:
                    samples.setdefault(match.group(1), {})[match.group(2).lower()] = member
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"cannot read shard {shard} ({exc}); expected an uncompressed tar of webdataset samples") from None
    return list(samples.items())


def read_member(shard: Path, member: tarfile.TarInfo) -> bytes:
    """Return the bytes of a tar member, read directly at its offset."""
    with open(shard, "rb") as handle:
        handle.seek(member.offset_data)
        return handle.read(member.size)


class WdsClassification(Dataset):
    """A classification split in clip-benchmark's webdataset layout; items are (transformed image, class index)."""

    def __init__(self, root: Path, split: str = "test", transform: Callable | None = None,
                 classnames: list[str] | None = None, templates: list[str] | None = None):
        root = self.folder = Path(root)
        self.disk_split = split
        if not (root / split).is_dir():
            raise UserError(f"webdataset split not found: expected {root / split}/0.tar ... "
                            f"beside {root / CLASSNAMES_FILE}")
        kind_file = root / "dataset_type.txt"
        kind = kind_file.read_text().strip().lower() if kind_file.is_file() else "classification"
        if kind != "classification":
            raise UserError(f"{kind_file} says '{kind}'; this reader reads single-label classification sets "
                            f"(samples with a .cls label)")
        self.classes = classnames or read_lines(root / CLASSNAMES_FILE, "class-names file")
        templates_file = root / TEMPLATES_FILE
        self.templates = templates or (read_lines(templates_file, "templates file") if templates_file.is_file()
                                       else ["a photo of a {c}."])
        shards = shard_files(root / split)
        self.samples: list[tuple[Path, tarfile.TarInfo]] = []
        self.metadata_members: list[tarfile.TarInfo | None] = []
        self.targets: list[int] = []
        for shard in shards:
            for key, members in index_shard(shard):
                image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
                if image is None or "cls" not in members:
                    raise UserError(f"sample '{key}' in {shard} lacks an image ({'/'.join(IMAGE_EXTENSIONS)}) or a "
                                    f".cls label; expected both")
                label = self._label(shard, members["cls"])
                self.samples.append((shard, image))
                self.metadata_members.append(members.get("npy"))
                self.targets.append(label)
        if not self.samples:
            raise UserError(f"the shards in {root / split} hold no samples")
        self.transform = transform
        digest = hashlib.sha256(fingerprint_files(shards + [root / CLASSNAMES_FILE]).encode())
        digest.update(str(self.targets).encode())
        self.fingerprint = digest.hexdigest()[:16]

    def _label(self, shard: Path, member: tarfile.TarInfo) -> int:
        text = read_member(shard, member).decode("utf-8", "replace").strip()
        if not text.lstrip("-").isdigit() or not 0 <= int(text) < len(self.classes):
            raise UserError(f"{shard}:{member.name} holds '{text[:20]}'; expected a class index in "
                            f"0..{len(self.classes) - 1} ({len(self.classes)} names in {CLASSNAMES_FILE})")
        return int(text)

    @functools.cached_property
    def metadata(self) -> np.ndarray:
        """Return every sample's metadata (its .npy member: a vector of integers, DataComp's metadata fields in
        their evaluator's order) as an (N, F) int64 array; a set without .npy members is a UserError."""
        missing = [i for i, m in enumerate(self.metadata_members) if m is None]
        if missing:
            shard = self.samples[missing[0]][0]
            raise UserError(f"{len(missing)} samples of {self.folder / self.disk_split} have no .npy metadata, e.g. in "
                            f"{shard}; expected <key>.npy beside each <key>.cls (DataComp's WILDS and fairness sets)")
        rows = []
        for (shard, _), member in zip(self.samples, self.metadata_members):
            try:
                rows.append(np.load(io.BytesIO(read_member(shard, member)), allow_pickle=False).reshape(-1))
            except ValueError as exc:
                raise UserError(f"cannot read {shard}:{member.name} as a numpy array ({exc})") from None
        if len({len(r) for r in rows}) != 1:
            raise UserError(f"the .npy metadata of {self.folder / self.disk_split} differ in length; expected one vector "
                            f"of the same fields per sample")
        return np.stack(rows).astype(np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        shard, member = self.samples[index]
        try:
            image = Image.open(io.BytesIO(read_member(shard, member))).convert("RGB")
        except OSError as exc:
            raise UserError(f"cannot decode {shard}:{member.name}: {exc}") from None
        return (self.transform(image) if self.transform else image), self.targets[index]
