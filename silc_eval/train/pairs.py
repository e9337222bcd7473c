"""Image-text training pairs from webdataset shards or a CSV file, in seeded, resumable batches.

Every rank reads the same stream and forms the same global batches, then keeps its own
slice. A global batch is thus identical for any number of ranks, which is what makes a
2-process run reproduce a 1-process run with the same global batch. Samples that cannot
be read (missing image or caption, undecodable image) are skipped and counted once each,
however many epochs meet them.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image

from silc_eval.core.errors import UserError
from silc_eval.train.augment import sample_generator

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


@dataclass
class PairSource:
    """Where pairs come from: kind 'webdataset' (shards) or 'csv' (csv_path, image paths relative to its folder)."""

    kind: str
    shards: list[str] = field(default_factory=list)
    csv_path: Path | None = None
    image_column: str = "filepath"
    caption_column: str = "caption"
    size: int | None = None


@dataclass
class Batch:
    """One rank's slice of a global batch: views (list of (b, 3, s, s)), tokens, captions, stream positions.

    step is set by the loop before the batch is used (objectives seed per-step masks with it).
    """

    views: list[torch.Tensor]
    tokens: torch.Tensor
    captions: list[str]
    positions: torch.Tensor
    step: int = 0


@dataclass
class ReadStats:
    """Samples read (every read, all epochs) and the distinct unreadable samples, for the log and the card."""

    read: int = 0
    examples: list[str] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    @property
    def skipped(self) -> int:
        """Return the number of distinct unreadable samples (files), not of failed reads."""
        return len(self.keys)

    def skip(self, key: str, reason: str) -> None:
        """Note an unreadable sample (once, however often it is met); keep the first few reasons."""
        if key in self.keys:
            return
        self.keys.add(key)
        if len(self.examples) < 5:
            self.examples.append(f"{key}: {reason}")


def list_shards(folder: Path) -> list[str]:
    """Return the sorted .tar shard paths in folder; none is a UserError."""
    shards = sorted(str(p) for p in Path(folder).glob("*.tar"))
    if not shards:
        raise UserError(f"no webdataset shards in {folder}: expected {folder}/*.tar with <key>.png|jpg + <key>.txt")
    return shards


def _read_csv(path: Path, **kwargs):
    """pandas.read_csv, its failures (unreadable, empty, not a CSV) as a UserError naming path."""
    import pandas as pd

    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; expected a CSV with a header line") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise UserError(f"{path} is not a readable CSV ({type(exc).__name__}: {reason})") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def csv_source(path: Path, image_column: str = "filepath", caption_column: str = "caption") -> PairSource:
    """Return a PairSource for a CSV of image paths and captions.

    A missing or malformed file, a missing column, no rows, or a CSV none of whose images exists is a UserError
    (the check stops at the first image that exists, so it costs one stat in the usual case).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"caption CSV not found: expected {path} with columns {image_column},{caption_column}")
    columns = list(_read_csv(path, nrows=0).columns)
    for column in (image_column, caption_column):
        if column not in columns:
            raise UserError(f"{path} has no column '{column}'; it has {', '.join(map(str, columns))}")
    images = _read_csv(path, usecols=[image_column])[image_column]
    if not len(images):
        raise UserError(f"{path} has no rows; expected one image path and caption per line")
    if not any((path.parent / str(image)).is_file() for image in images):
        raise UserError(f"none of the {len(images)} images of {path} exists (e.g. {path.parent / str(images.iloc[0])}); "
                        f"image paths are read relative to the CSV's folder")
    return PairSource("csv", csv_path=path, image_column=image_column, caption_column=caption_column,
                      size=len(images))


def _every_shard(shards):
    """Node splitter that keeps every shard on every rank."""
    yield from shards


def _raw_webdataset(source: PairSource, seed: int, epoch: int, shuffle_buffer: int) -> Iterator[tuple[str, object, object]]:
    import webdataset as wds

    order = list(source.shards)
    random.Random(f"{seed}:{epoch}:shards").shuffle(order)
    # Every rank deliberately reads the whole stream (see the module docstring): no node splitting.
    stream = wds.WebDataset(order, shardshuffle=False, empty_check=False, handler=wds.warn_and_continue,
                            nodesplitter=_every_shard)
    if shuffle_buffer > 1:
        stream = stream.shuffle(shuffle_buffer, seed=seed * 100_003 + epoch)
    for sample in stream:
        image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        shard = Path(str(sample.get("__url__", ""))).name
        yield f"{shard}/{sample.get('__key__', '?')}" if shard else sample.get("__key__", "?"), image, sample.get("txt")


def _raw_csv(source: PairSource, seed: int, epoch: int) -> Iterator[tuple[str, object, object]]:
    table = _read_csv(source.csv_path)
    order = list(range(len(table)))
    random.Random(f"{seed}:{epoch}:csv").shuffle(order)
    root = source.csv_path.parent
    for row in order:
        path, caption = table.iloc[row][source.image_column], table.iloc[row][source.caption_column]
        yield str(path), root / str(path), caption


def _decode(image, caption) -> tuple[Image.Image, str]:
    """Return (RGB image, caption) or raise ValueError saying why the sample is unreadable."""
    if image is None:
        raise ValueError("no image field")
    if isinstance(caption, bytes):
        text = caption.decode("utf-8", "replace")
    else:
        text = "" if caption is None or (isinstance(caption, float) and caption != caption) else str(caption)
    if not text.strip():
        raise ValueError("no caption")
    try:
        handle = Image.open(io.BytesIO(image)) if isinstance(image, bytes) else Image.open(image)
        with handle:
            return handle.convert("RGB"), text.strip()
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"undecodable image ({type(exc).__name__})") from None


def readable_pairs(source: PairSource, seed: int, epoch: int, shuffle_buffer: int,
                   stats: ReadStats) -> Iterator[tuple[Image.Image, str]]:
    """Yield decoded (image, caption) pairs of one epoch in seeded order, skipping and counting bad ones."""
    raw = _raw_webdataset(source, seed, epoch, shuffle_buffer) if source.kind == "webdataset" \
        else _raw_csv(source, seed, epoch)
    for key, image, caption in raw:
        try:
            pair = _decode(image, caption)
        except ValueError as exc:
            stats.skip(key, str(exc))
            continue
        stats.read += 1
        yield pair


def iterate_batches(source: PairSource, transform: Callable, tokenizer: Callable, global_batch: int, seed: int,
                    epoch: int, rank: int = 0, world_size: int = 1, start_batch: int = 0, shuffle_buffer: int = 2000,
                    stats: ReadStats | None = None) -> Iterator[Batch]:
    """Yield this rank's Batch of every full global batch of one epoch, from batch start_batch on.

    transform(image, generator) returns the list of view tensors of a sample; its
    generator is seeded by (seed, epoch, position), so views do not depend on the rank.
    """
    if global_batch % world_size:
        raise UserError(f"batch size {global_batch} is not divisible by the {world_size} processes")
    local = global_batch // world_size
    stats = stats if stats is not None else ReadStats()
    pending: list[tuple[Image.Image, str]] = []
    batch_index = 0
    for pair in readable_pairs(source, seed, epoch, shuffle_buffer, stats):
        pending.append(pair)
        if len(pending) < global_batch:
            continue
        if batch_index >= start_batch:
            first = batch_index * global_batch + rank * local
            mine = pending[rank * local:(rank + 1) * local]
            per_sample = [transform(image, sample_generator(seed, epoch, first + i)) for i, (image, _) in
                          enumerate(mine)]
            views = [torch.stack([sample[v] for sample in per_sample]) for v in range(len(per_sample[0]))]
            captions = [caption for _, caption in mine]
            yield Batch(views, tokenizer(captions), captions, torch.arange(first, first + local))
        pending, batch_index = [], batch_index + 1
