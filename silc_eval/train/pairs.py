"""Image-text training pairs streamed from webdataset tar shards."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch


def list_shards(folder: Path) -> list[str]:
    """Return the sorted .tar shard paths in folder; none is a UserError."""
    shards = sorted(str(p) for p in Path(folder).glob("*.tar"))
    if not shards:
        from silc_eval.errors import UserError

        raise UserError(f"no webdataset shards in {folder}: expected {folder}/*.tar with <key>.png|jpg + <key>.txt")
    return shards


def iterate_pairs(shards: Sequence[str], transform: Callable, tokenizer: Callable, batch_size: int, seed: int,
                  epoch: int, shuffle_buffer: int = 2000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, tokens) batches for one epoch, shuffled reproducibly from (seed, epoch).

    Shard order and the sample buffer are both seeded, so the same (seed, epoch) always
    gives the same batches. The last incomplete batch is dropped.
    """
    import webdataset as wds

    order = list(shards)
    random.Random(f"{seed}:{epoch}:shards").shuffle(order)
    dataset = (wds.WebDataset(order, shardshuffle=False, empty_check=False)
               .shuffle(shuffle_buffer, seed=seed * 100003 + epoch)
               .decode("pil").to_tuple("png;jpg;jpeg", "txt"))
    images, texts = [], []
    for image, text in dataset:
        images.append(transform(image.convert("RGB")))
        texts.append(text.strip())
        if len(images) == batch_size:
            yield torch.stack(images), tokenizer(texts)
            images, texts = [], []
