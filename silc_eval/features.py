"""Image and text feature extraction shared by every task."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


class _ImagesOnly(Dataset):
    """View of a (image, target) dataset that yields only the transformed image."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset[index][0]


def autocast_context(device: str | torch.device, amp: bool):
    """Return an autocast context on CUDA when amp is on, else a no-op context."""
    device_type = torch.device(device).type
    if amp and device_type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def encode_images(model, dataset: Dataset, batch_size: int = 256, num_workers: int = 0, amp: bool = False,
                  progress: bool = True, desc: str = "images") -> torch.Tensor:
    """Return L2-normalised float32 image embeddings (N, D) on the CPU, in dataset order."""
    loader = DataLoader(_ImagesOnly(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=model.device.type == "cuda")
    chunks = []
    with torch.inference_mode(), autocast_context(model.device, amp):
        for images in tqdm(loader, desc=f"encode {desc}", disable=not progress, leave=False):
            chunks.append(model.encode_image(images.to(model.device, non_blocking=True), normalize=True).float().cpu())
    return torch.cat(chunks)


def encode_texts(model, texts: Sequence[str], batch_size: int = 1024, amp: bool = False,
                 progress: bool = False, desc: str = "texts") -> torch.Tensor:
    """Return L2-normalised float32 text embeddings (N, D) on the CPU, in input order."""
    chunks = []
    with torch.inference_mode(), autocast_context(model.device, amp):
        for start in tqdm(range(0, len(texts), batch_size), desc=f"encode {desc}", disable=not progress, leave=False):
            tokens = model.tokenize(texts[start:start + batch_size]).to(model.device)
            chunks.append(model.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(chunks)
