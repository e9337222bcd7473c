"""Image and text feature extraction shared by every task."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from silc_eval.core import distributed
from silc_eval.core.errors import worker_errors_unwrapped
from silc_eval.features import cache as feature_cache


class _ImagesOnly(Dataset):
    """View of a (image, target) dataset that yields only the transformed image."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset[index][0]


class OrderedLoader:
    """A DataLoader over a dataset, in order, whose UserErrors raised in worker processes (an unreadable
    image with num_workers > 0) surface as their original one-line UserError, not as torch's re-raise
    carrying the worker's traceback in its message (core/errors.py unwrap_worker_error)."""

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False,
                 collate_fn: Callable | None = None):
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                 pin_memory=pin_memory, collate_fn=collate_fn)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        with worker_errors_unwrapped():
            yield from self.loader


def autocast_context(device: str | torch.device, amp: bool):
    """Return an autocast context on CUDA when amp is on, else a no-op context."""
    device_type = torch.device(device).type
    if amp and device_type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def precision_label(model, amp: bool) -> str:
    """Return how a model's features are computed, for cache keys: 'fp16-weights' for a model loaded in half precision
    (models/loading.py PRECISIONS), 'fp16-autocast' with amp on CUDA, 'fp32' otherwise."""
    if getattr(model, "precision", "fp32") == "fp16":
        return "fp16-weights"
    return "fp16-autocast" if amp and model.device.type == "cuda" else "fp32"


def compute_image_features(model, dataset: Dataset, batch_size: int = 256, num_workers: int = 0, amp: bool = False,
                           progress: bool = True, desc: str = "images", normalize: bool = True) -> torch.Tensor:
    """Return float32 image embeddings (N, D) on the CPU in dataset order, always running the model (no cache).

    Under torchrun (silc_eval.core.distributed on) each rank encodes its block of whole batches and
    every rank gets all N rows back in dataset order.
    """
    shard = distributed.shard_dataset(_ImagesOnly(dataset), batch_size)
    loader = OrderedLoader(shard, batch_size=batch_size, num_workers=num_workers,
                           pin_memory=model.device.type == "cuda")
    chunks = []
    with torch.inference_mode(), autocast_context(model.device, amp):
        for images in tqdm(loader, desc=f"encode {desc}", disable=not progress, leave=False):
            chunks.append(model.encode_image(images.to(model.device, non_blocking=True), normalize=normalize).float().cpu())
            feature_cache.STATS["images_computed"] += len(images)
    local = torch.cat(chunks) if chunks else torch.empty(0)
    return distributed.gather_in_order(local, len(dataset))


def encode_images(model, dataset: Dataset, batch_size: int = 256, num_workers: int = 0, amp: bool = False,
                  progress: bool = True, desc: str = "images", normalize: bool = True,
                  split: str | None = None) -> torch.Tensor:
    """Return float32 image embeddings (N, D) on the CPU, in dataset order (L2-normalised unless normalize=False).

    Served from the feature cache (silc_eval.features.cache) when the same model weights, dataset
    fingerprint, split (default: dataset.split when it has one), eval transform and precision were
    encoded before; computed and stored otherwise. The cache holds the raw embeddings and normalises
    them on the way out (what encode_image(normalize=True) does to the same rows), so the normalised and
    the raw features of a split are one encoding.
    """
    split = split if split is not None else getattr(dataset, "split", None)
    parts = feature_cache.key_parts(model, dataset, split, False, precision_label(model, amp))

    def compute():
        return compute_image_features(model, dataset, batch_size, num_workers, amp, progress, desc, False).numpy()

    features = torch.from_numpy(feature_cache.cached(parts, compute))
    return F.normalize(features, dim=-1) if normalize else features


def encode_instance_images(model, dataset, batch_size: int = 256, num_workers: int = 0, amp: bool = False,
                           progress: bool = True, desc: str = "images") -> tuple[torch.Tensor, list[list[int]]]:
    """Return (L2-normalised embeddings (U, D) of the images a set of instances uses, each image once; per instance
    its images' rows in them), for datasets with `instance_images` (per instance indices into its image files) and
    `image_dataset(indices)` (those files as a dataset with its own fingerprint), through the feature cache."""
    used = sorted({i for images in dataset.instance_images for i in images})
    row = {image: k for k, image in enumerate(used)}
    features = encode_images(model, dataset.image_dataset(used), batch_size=batch_size, num_workers=num_workers,
                             amp=amp, progress=progress, desc=desc, split="eval")
    return features, [[row[i] for i in images] for images in dataset.instance_images]


def encode_texts(model, texts: Sequence[str], batch_size: int = 1024, amp: bool = False,
                 progress: bool = False, desc: str = "texts") -> torch.Tensor:
    """Return L2-normalised float32 text embeddings (N, D) on the CPU, in input order.

    Served from the feature cache when the same model weights encoded the same token ids before
    (the prompt set and the tokenizer are in the key); computed and stored otherwise. Under
    torchrun each rank encodes its block of whole batches and every rank gets all N rows.
    """
    tokens = model.tokenize(list(texts)) if len(texts) else torch.empty(0, 0, dtype=torch.int64)
    precision = precision_label(model, amp)

    def compute():
        shard = distributed.shard_indices(len(texts), batch_size)
        chunks = []
        with torch.inference_mode(), autocast_context(model.device, amp):
            for start in tqdm(range(shard.start, shard.stop, batch_size), desc=f"encode {desc}",
                              disable=not progress, leave=False):
                batch = tokens[start:min(start + batch_size, shard.stop)].to(model.device)
                chunks.append(model.encode_text(batch, normalize=True).float().cpu())
                feature_cache.STATS["texts_computed"] += len(batch)
        local = torch.cat(chunks) if chunks else torch.empty(0)
        return distributed.gather_in_order(local, len(texts)).numpy()

    parts = feature_cache.text_key_parts(model, tokens, precision) if len(texts) else None
    return torch.from_numpy(feature_cache.cached(parts, compute))
