"""SynthScenes written to disk in the real datasets' formats, generated on demand.

Layout under ``<root>/synthscenes/`` (each part carries a ``manifest.json``):

- ``classification/``: ImageFolder ``{train,val}/<class>/<%06d>.png`` (label = main object
  class), ``classnames.txt`` (the class folders in sorted order: class index = sorted folder
  order, the torchvision ImageFolder convention) and ``templates.txt`` (``{c}`` prompts).
- ``retrieval/``: ``images/<%06d>.png`` and ``dataset_synthscenes.json`` (Karpathy format,
  5 captions per image, all split "test").
- ``segmentation/``: mmseg style ``img_dir/{train,val}/<%06d>.png`` and
  ``ann_dir/{train,val}/<%06d>.png`` (mode L, ids = SEGMENTATION_CLASSES order) and
  ``classes.txt``.
- ``train/``: webdataset shards ``shards/synthscenes-train-%06d.tar`` of ``<key>.png`` +
  ``<key>.txt`` pairs.
- ``world.json``: the world's classes, colours, class split and templates.

A part is present iff its ``manifest.json`` exists. Each is built in a temporary sibling
folder and renamed into place, so readers never see a half-written part. Every image is
drawn from its own RNG seeded by (seed, part, split, index), so output is byte-identical
for the same seed and config.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import sys
import tarfile
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import fingerprint_files, fingerprint_tree
from silc_eval.core.io import atomic_directory, atomic_write_json, atomic_write_text
from silc_eval.core.labels import IGNORE_INDEX
from silc_eval.core.paths import cache_dir
from silc_eval.producers.synthscenes_render import (
    CLASSIFICATION_TEMPLATES,
    COLOURS,
    OBJECT_CLASSES,
    POSITION_WORDS,
    SEEN_CLASSES,
    SEGMENTATION_CLASSES,
    SIZE_WORDS,
    STUFF_CLASSES,
    TYPICAL_COLOUR_SHARE,
    TYPICAL_COLOURS,
    UNSEEN_CLASSES,
    VERSION,
    Scene,
    SceneObject,
    caption_tokens,
    main_class_of,
    make_captions,
    render_scene,
    vocabulary,
)

__all__ = [
    "CLASSIFICATION_TEMPLATES", "COLOURS", "DATASET_DIR", "EVAL_PARTS", "IGNORE_INDEX", "MANIFEST",
    "OBJECT_CLASSES", "PARTS", "POSITION_WORDS", "SEEN_CLASSES", "SEGMENTATION_CLASSES",
    "SIZE_WORDS", "STUFF_CLASSES", "UNSEEN_CLASSES", "VERSION", "Scene", "SceneObject",
    "SynthScenesConfig", "caption_tokens", "classification_scene", "compute_part_fingerprint",
    "default_cache_root", "default_workers", "ensure_synthscenes", "item_rng", "main_class_of",
    "make_captions", "part_fingerprint", "read_manifest", "render_scene", "vocabulary",
    "world_description", "write_synthscenes",
]

PARTS = ("classification", "retrieval", "segmentation", "train")
EVAL_PARTS = ("classification", "retrieval", "segmentation")
DATASET_DIR = "synthscenes"
MANIFEST = "manifest.json"
CAPTIONS_PER_IMAGE = 5
_PNG = {"format": "PNG", "compress_level": 6}


@dataclass(frozen=True)
class SynthScenesConfig:
    """How much SynthScenes to generate and from which seed."""

    seed: int = 0
    image_size: int = 64
    n_cls_val_per_class: int = 100
    n_cls_train_per_class: int = 50
    n_retrieval: int = 1000
    seg_size: tuple[int, int] = (128, 96)
    n_seg_train: int = 400
    n_seg_val: int = 200
    n_train: int = 30000
    shard_size: int = 2000

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name != "seg_size" and not _is_count(value):
                raise UserError(f"SynthScenes config {name}={value!r} is invalid; expected an integer >= 0")
        seg_size = tuple(self.seg_size)
        if len(seg_size) != 2 or not all(_is_count(v) for v in seg_size):
            raise UserError(f"SynthScenes config seg_size={self.seg_size!r} is invalid; "
                            "expected (width, height)")
        object.__setattr__(self, "seg_size", seg_size)
        if min(self.image_size, *seg_size) < 16:
            raise UserError(f"SynthScenes image_size={self.image_size}, seg_size={seg_size} are too small; "
                            "expected at least 16 pixels")
        if self.shard_size < 1:
            raise UserError(f"SynthScenes shard_size={self.shard_size} is invalid; expected at least 1")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ----------------------------------------------------------------------------- seeds and paths

def _stable_id(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def item_rng(seed: int, part: str, split: str, index: int) -> np.random.Generator:
    """Return the RNG of one generated item, derived from (seed, part, split, index) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, _stable_id(part), _stable_id(split), index]))


def _config_hash(config: SynthScenesConfig) -> str:
    blob = json.dumps(asdict(config), sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:8]


def default_cache_root(config: SynthScenesConfig = SynthScenesConfig()) -> Path:
    """Return the default data root for config: $SILC_EVAL_CACHE (or ~/.cache/silc_eval) /
    synthscenes-<version>-seed<seed>-<config hash>; the dataset lives in its synthscenes/."""
    return cache_dir() / f"synthscenes-{VERSION}-seed{config.seed}-{_config_hash(config)}"


# ----------------------------------------------------------------------------- file writing

def _save_png(image: Image.Image, path: Path) -> None:
    image.save(path, **_PNG)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **_PNG)
    return buffer.getvalue()


def _progress(total: int, part: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=f"synthscenes {part}", unit="img", file=sys.stderr,
                disable=not enabled, leave=False)


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


# ----------------------------------------------------------------------------- jobs
# A part is written by jobs: picklable (function, args) pairs that each write a slice of the
# part's files and return (items written, result). Jobs may run in worker processes; their
# results are used in job order, so the output does not depend on the number of workers.

Job = tuple[Callable[..., tuple[int, object]], tuple]
_CHUNK = 100
_MIN_PARALLEL_ITEMS = 500  # below this, starting worker processes costs more than it saves


def _chunks(total: int, size: int | None = None) -> list[tuple[int, int]]:
    size = size or _CHUNK
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def default_workers() -> int:
    """Return the number of worker processes used for large parts (the usable CPUs, at most 8)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8))


def _run_serial(jobs: Sequence[Job], bar: tqdm) -> list:
    results = []
    for fn, args in jobs:
        count, result = fn(*args)
        bar.update(count)
        results.append(result)
    return results


def _run_pool(jobs: Sequence[Job], workers: int, bar: tqdm) -> list:
    # spawn, not fork: the caller may hold threads (torch, OpenMP) that fork would break.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(fn, *args) for fn, args in jobs]
        for future in as_completed(futures):
            bar.update(future.result()[0])
        return [future.result()[1] for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_jobs(jobs: Sequence[Job], workers: int, total: int, bar: tqdm) -> list:
    """Run jobs (in a process pool when worthwhile) and return their results in job order."""
    if workers <= 1 or len(jobs) <= 1 or total < _MIN_PARALLEL_ITEMS:
        return _run_serial(jobs, bar)
    return _run_pool(jobs, min(workers, len(jobs)), bar)


# ----------------------------------------------------------------------------- classification

def classification_scene(config: SynthScenesConfig, split: str, index: int) -> Scene:
    """Return the scene of classification image ``index`` of ``split`` (its class cycles
    through OBJECT_CLASSES with the index)."""
    cls = OBJECT_CLASSES[index % len(OBJECT_CLASSES)]
    return render_scene(item_rng(config.seed, "classification", split, index), config.image_size, cls)


def _classification_chunk(out: Path, config: SynthScenesConfig, split: str, start: int, stop: int):
    for index in range(start, stop):
        scene = classification_scene(config, split, index)
        _save_png(scene.image, out / split / scene.main_class / f"{index:06d}.png")
    return stop - start, None


def _write_classification(out: Path, config: SynthScenesConfig, run: Callable) -> dict:
    per_class = {"train": config.n_cls_train_per_class, "val": config.n_cls_val_per_class}
    jobs = []
    for split, n in per_class.items():
        for cls in OBJECT_CLASSES:
            (out / split / cls).mkdir(parents=True)
        jobs += [(_classification_chunk, (out, config, split, a, b))
                 for a, b in _chunks(n * len(OBJECT_CLASSES))]
    run(jobs)
    classnames = sorted(OBJECT_CLASSES)
    _write_lines(out / "classnames.txt", classnames)
    _write_lines(out / "templates.txt", CLASSIFICATION_TEMPLATES)
    counts = {split: {cls: n for cls in classnames} for split, n in per_class.items()}
    return {"format": "imagefolder", "counts": counts, "classnames": classnames,
            "class_index": "sorted folder order"}


# ----------------------------------------------------------------------------- retrieval

def _retrieval_entry(config: SynthScenesConfig, index: int, images: Path) -> dict:
    rng = item_rng(config.seed, "retrieval", "test", index)
    scene = render_scene(rng, config.image_size)
    filename = f"{index:06d}.png"
    _save_png(scene.image, images / filename)
    sentids = [index * CAPTIONS_PER_IMAGE + k for k in range(CAPTIONS_PER_IMAGE)]
    sentences = [{"raw": raw, "tokens": [t for t in caption_tokens(raw) if t not in ".,"],
                  "imgid": index, "sentid": sid}
                 for sid, raw in zip(sentids, make_captions(scene, rng, CAPTIONS_PER_IMAGE))]
    return {"filepath": "images", "filename": filename, "imgid": index, "split": "test",
            "sentids": sentids, "sentences": sentences}


def _retrieval_chunk(out: Path, config: SynthScenesConfig, start: int, stop: int):
    return stop - start, [_retrieval_entry(config, index, out / "images") for index in range(start, stop)]


def _write_retrieval(out: Path, config: SynthScenesConfig, run: Callable) -> dict:
    (out / "images").mkdir(parents=True)
    chunks = run([(_retrieval_chunk, (out, config, a, b)) for a, b in _chunks(config.n_retrieval)])
    annotation = {"dataset": "synthscenes", "images": [entry for chunk in chunks for entry in chunk]}
    (out / "dataset_synthscenes.json").write_text(json.dumps(annotation, sort_keys=True), encoding="utf-8")
    return {"format": "karpathy-json", "annotation": "dataset_synthscenes.json",
            "counts": {"images": config.n_retrieval, "captions": config.n_retrieval * CAPTIONS_PER_IMAGE}}


# ----------------------------------------------------------------------------- segmentation

def _segmentation_chunk(out: Path, config: SynthScenesConfig, split: str, start: int, stop: int):
    for index in range(start, stop):
        scene = render_scene(item_rng(config.seed, "segmentation", split, index), tuple(config.seg_size))
        _save_png(scene.image, out / "img_dir" / split / f"{index:06d}.png")
        _save_png(Image.fromarray(scene.mask), out / "ann_dir" / split / f"{index:06d}.png")
    return stop - start, None


def _write_segmentation(out: Path, config: SynthScenesConfig, run: Callable) -> dict:
    splits = {"train": config.n_seg_train, "val": config.n_seg_val}
    jobs = []
    for split, n in splits.items():
        (out / "img_dir" / split).mkdir(parents=True)
        (out / "ann_dir" / split).mkdir(parents=True)
        jobs += [(_segmentation_chunk, (out, config, split, a, b))
                 for a, b in _chunks(n, max(1, _CHUNK // 2))]
    run(jobs)
    _write_lines(out / "classes.txt", SEGMENTATION_CLASSES)
    return {"format": "mmseg", "counts": splits, "classes": list(SEGMENTATION_CLASSES),
            "seen_classes": list(SEEN_CLASSES), "unseen_classes": list(UNSEEN_CLASSES),
            "ignore_index": IGNORE_INDEX, "reduce_zero_label": False, "size": list(config.seg_size)}


# ----------------------------------------------------------------------------- training shards

def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _train_sample(config: SynthScenesConfig, index: int) -> tuple[bytes, bytes]:
    rng = item_rng(config.seed, "train", "train", index)
    scene = render_scene(rng, config.image_size)
    caption = make_captions(scene, rng, 1)[0]
    return _png_bytes(scene.image), caption.encode("utf-8")


def _train_shard(out: Path, config: SynthScenesConfig, shard: int, start: int, stop: int):
    name = f"synthscenes-train-{shard:06d}.tar"
    with tarfile.open(out / "shards" / name, "w", format=tarfile.USTAR_FORMAT) as tar:
        for index in range(start, stop):
            png, txt = _train_sample(config, index)
            _tar_member(tar, f"{index:08d}.png", png)
            _tar_member(tar, f"{index:08d}.txt", txt)
    return stop - start, {"file": f"shards/{name}", "samples": stop - start}


def _write_train(out: Path, config: SynthScenesConfig, run: Callable) -> dict:
    (out / "shards").mkdir(parents=True)
    jobs = [(_train_shard, (out, config, shard, a, b))
            for shard, (a, b) in enumerate(_chunks(config.n_train, config.shard_size))]
    shards = run(jobs)
    return {"format": "webdataset", "shards": shards,
            "counts": {"samples": config.n_train, "shards": len(shards)}}


# ----------------------------------------------------------------------------- parts

_WRITERS: dict[str, Callable[[Path, SynthScenesConfig, Callable], dict]] = {
    "classification": _write_classification,
    "retrieval": _write_retrieval,
    "segmentation": _write_segmentation,
    "train": _write_train,
}
_PART_CONFIG_KEYS = {
    "classification": ("seed", "image_size", "n_cls_train_per_class", "n_cls_val_per_class"),
    "retrieval": ("seed", "image_size", "n_retrieval"),
    "segmentation": ("seed", "seg_size", "n_seg_train", "n_seg_val"),
    "train": ("seed", "image_size", "n_train", "shard_size"),
}


def _part_total(part: str, config: SynthScenesConfig) -> int:
    per_class = config.n_cls_train_per_class + config.n_cls_val_per_class
    return {"classification": per_class * len(OBJECT_CLASSES),
            "retrieval": config.n_retrieval,
            "segmentation": config.n_seg_train + config.n_seg_val,
            "train": config.n_train}[part]


def _part_config(part: str, config: SynthScenesConfig) -> dict:
    values = asdict(config)
    return {key: list(values[key]) if key == "seg_size" else values[key] for key in _PART_CONFIG_KEYS[part]}


def read_manifest(part_dir: Path) -> dict:
    """Return the parsed manifest.json of a generated part folder."""
    path = Path(part_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read SynthScenes manifest {path}: {err}; expected a generated part") from err


def part_fingerprint(part_dir: Path) -> str:
    """Return the fingerprint recorded in a part's manifest.json."""
    return read_manifest(part_dir)["fingerprint"]


def compute_part_fingerprint(part_dir: Path) -> str:
    """Return the fingerprint of a part's files recomputed from disk, manifest.json excluded
    (equals part_fingerprint for an untouched part)."""
    root = Path(part_dir)
    files = [p for p in root.rglob("*") if p.is_file() and p != root / MANIFEST
             and not any(s.startswith(".") for s in p.relative_to(root).parts)]
    return fingerprint_files(files, root, full_content=True)


class _AlreadyPresent(Exception):
    """Another process finished the same part while this one was generating it."""


def _generate_part(dataset: Path, part: str, config: SynthScenesConfig, progress: bool, workers: int) -> None:
    final = dataset / part
    total = _part_total(part, config)
    try:
        with atomic_directory(final) as tmp, _progress(total, part, progress) as bar:
            info = _WRITERS[part](tmp, config, lambda jobs: _run_jobs(jobs, workers, total, bar))
            manifest = {"part": part, "world_version": VERSION, "config": _part_config(part, config),
                        "fingerprint": fingerprint_tree(tmp, full_content=True), **info}
            if (final / MANIFEST).exists():
                raise _AlreadyPresent(part)
            atomic_write_json(tmp / MANIFEST, manifest)
    except _AlreadyPresent:
        pass


def _check_existing(dataset: Path, part: str, config: SynthScenesConfig) -> None:
    manifest = read_manifest(dataset / part)
    wanted = {"world_version": VERSION, "config": _part_config(part, config)}
    found = {"world_version": manifest.get("world_version"), "config": manifest.get("config")}
    if found != wanted:
        raise UserError(f"SynthScenes part {dataset / part} was generated with {found}, not {wanted}; "
                        "delete that folder or choose another data root")


def world_description(config: SynthScenesConfig) -> dict:
    """Return the content of world.json: version, seed, classes, colours, split, templates."""
    return {"version": VERSION, "seed": config.seed, "object_classes": list(OBJECT_CLASSES),
            "stuff_classes": list(STUFF_CLASSES), "colours": {k: list(v) for k, v in COLOURS.items()},
            "typical_colours": dict(TYPICAL_COLOURS), "typical_colour_share": TYPICAL_COLOUR_SHARE,
            "unseen_classes": list(UNSEEN_CLASSES), "seen_classes": list(SEEN_CLASSES),
            "segmentation_classes": list(SEGMENTATION_CLASSES), "ignore_index": IGNORE_INDEX,
            "sizes": list(SIZE_WORDS), "positions": list(POSITION_WORDS),
            "classification_templates": list(CLASSIFICATION_TEMPLATES), "vocabulary": vocabulary()}


def _write_world(dataset: Path, config: SynthScenesConfig) -> None:
    path = dataset / "world.json"
    text = json.dumps(world_description(config), indent=2, sort_keys=True) + "\n"
    if not path.exists():
        atomic_write_text(path, text)
    elif path.read_text(encoding="utf-8") != text:
        found = json.loads(path.read_text(encoding="utf-8"))
        raise UserError(f"{path} describes {found.get('version')} seed {found.get('seed')}, not {VERSION} "
                        f"seed {config.seed}; delete {dataset} or choose another data root")


def _check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(parts, str):
        parts = (parts,)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"unknown SynthScenes part(s) {unknown}; expected some of {list(PARTS)}")
    return tuple(parts)


def ensure_synthscenes(root: Path | None = None, parts: Sequence[str] = EVAL_PARTS,
                       config: SynthScenesConfig = SynthScenesConfig(), progress: bool = True,
                       workers: int = 1) -> Path:
    """Generate whichever of ``parts`` are missing under root/synthscenes/ and return root,
    the folder that contains synthscenes/ (default_cache_root(config) when root is None).

    Parts already present are left alone; one generated with a different config is a UserError.
    Large parts can be rendered by ``workers`` processes (the files do not depend on it).
    They are started with "spawn", so a script that asks for workers > 1 needs the usual
    ``if __name__ == "__main__":`` guard; the default of 1 works from anywhere.
    """
    parts = _check_parts(parts)
    root = Path(root) if root is not None else default_cache_root(config)
    dataset = root / DATASET_DIR
    dataset.mkdir(parents=True, exist_ok=True)
    _write_world(dataset, config)
    for part in parts:
        if (dataset / part / MANIFEST).exists():
            _check_existing(dataset, part, config)
        else:
            _generate_part(dataset, part, config, progress, workers)
    return root


def write_synthscenes(out: Path, config: SynthScenesConfig = SynthScenesConfig(),
                      parts: Sequence[str] = PARTS, progress: bool = True,
                      workers: int = 1) -> Path:
    """Generate SynthScenes (all parts by default) under out/synthscenes/ and return out."""
    return ensure_synthscenes(Path(out), parts=parts, config=config, progress=progress, workers=workers)
