"""Image-text retrieval recall@k (PROTOCOLS.md section 2, CLIP_benchmark conventions)."""

from __future__ import annotations

from typing import Sequence

import torch

from silc_eval.features import encode_images, encode_texts

DEFAULT_PARAMS = {"batch_size": 256, "num_workers": 0, "amp": False, "recall_k": [1, 5, 10], "chunk_size": 4096}
METRICS = ("image_retrieval_recall@{k}", "text_retrieval_recall@{k}")
DATASET_FORMATS = ("karpathy", "coco_captions", "clip_benchmark")


def topk_hits(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int], chunk_size: int = 4096) -> dict[int, torch.Tensor]:
    """Return, per k, a bool per query row: is any positive column among the row's top-k scores.

    scores and positives are (queries, candidates); rows are processed in chunks. Each k
    takes its own top-k, as CLIP_benchmark does: with exactly tied scores (repeated
    captions) torch may order the tied candidates differently for different k, so a
    shared top-max(k) sliced per k would not give CLIP_benchmark's numbers.
    """
    hits = {k: [] for k in ks}
    for start in range(0, scores.shape[0], chunk_size):
        rows, row_positives = scores[start:start + chunk_size], positives[start:start + chunk_size]
        for k in ks:
            top = rows.topk(min(k, rows.shape[1]), dim=1, largest=True, sorted=True).indices
            hits[k].append(row_positives.gather(1, top).any(dim=1))
    return {k: torch.cat(v) for k, v in hits.items()}


def retrieval_metrics(text_features: torch.Tensor, image_features: torch.Tensor, caption_image_index: torch.Tensor,
                      ks: Sequence[int], chunk_size: int = 4096) -> dict[str, float]:
    """Return image and text retrieval recall@k from normalised features.

    Image retrieval: fraction of captions whose image is in the top-k images.
    Text retrieval: fraction of images with at least one of their captions in the top-k captions.
    """
    scores = text_features @ image_features.T
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(scores)), caption_image_index] = True
    image_hits = topk_hits(scores, positives, ks, chunk_size)
    text_hits = topk_hits(scores.T, positives.T, ks, chunk_size)
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = image_hits[k].float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = text_hits[k].float().mean().item()
    return metrics


def evaluate(model, dataset, params: dict, progress: bool = True) -> dict[str, float]:
    """Return retrieval recalls of model on a KarpathyRetrieval dataset (several captions per image)."""
    captions = [caption for per_image in dataset.captions for caption in per_image]
    caption_image_index = torch.tensor([i for i, per_image in enumerate(dataset.captions) for _ in per_image])
    image_features = encode_images(model, dataset, batch_size=params["batch_size"], num_workers=params["num_workers"],
                                   amp=params["amp"], progress=progress, desc="retrieval images")
    text_features = encode_texts(model, captions, amp=params["amp"], progress=progress, desc="captions")
    return retrieval_metrics(text_features, image_features, caption_image_index, params["recall_k"],
                             params["chunk_size"])
