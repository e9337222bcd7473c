"""Image-text retrieval recall@k (benchmarks/PROTOCOLS.md section 2, CLIP_benchmark conventions).

Per-sample outcomes: per caption the rank of its image among all images (0 = first), per image
the best rank of its own captions among all captions, and for every k of the protocol whether
the query is a hit at k. A hit is decided as CLIP_benchmark decides it, by torch.topk(k) per k;
recall@k is the fraction of hits. Ranks count the candidates scored strictly higher plus the
tied ones listed earlier (a stable descending order), so rank < k and a hit at k differ only
where exactly tied scores straddle the k-th place (repeated captions), which topk breaks in
its own, kernel-dependent way.

Version 2 adds mean_recall@k, the mean of image and text recall@k (DataComp's main retrieval metric); the
other metrics are unchanged.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from silc_eval.core.contract import Metric, Outcome, Task
from silc_eval.core.params import boolean, int_list, integer
from silc_eval.core.resampling import UnitStatistics, ratio
from silc_eval.features import encode_images, encode_texts


def topk_hits(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int],
              chunk_size: int = 4096) -> dict[int, torch.Tensor]:
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


def _hit_matrix(hits: dict[int, torch.Tensor], ks: Sequence[int]) -> np.ndarray:
    return torch.stack([hits[k] for k in ks], dim=1).numpy()


def best_positive_ranks(scores: torch.Tensor, positives: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Return per query row the rank of its best positive column in a stable descending order of its scores.

    scores and positives are (queries, candidates); every row needs at least one positive. The
    best positive is the highest-scored one (the first of tied ones); its rank counts the columns
    scored higher and the equally scored columns before it. Rows are processed in chunks.
    """
    ranks = []
    columns = torch.arange(scores.shape[1])
    for start in range(0, scores.shape[0], chunk_size):
        rows, row_positives = scores[start:start + chunk_size], positives[start:start + chunk_size]
        masked = rows.masked_fill(~row_positives, -torch.inf)
        best = masked.max(dim=1)
        first = (masked == best.values[:, None]).float().argmax(dim=1)  # the first column reaching the best score
        higher = (rows > best.values[:, None]).sum(dim=1)
        tied_before = ((rows == best.values[:, None]) & (columns[None] < first[:, None])).sum(dim=1)
        ranks.append(higher + tied_before)
    return torch.cat(ranks)


def outcomes(text_features: torch.Tensor, image_features: torch.Tensor, caption_image_index: torch.Tensor,
             ks: Sequence[int], chunk_size: int = 4096) -> dict[str, np.ndarray]:
    """Return the per-sample outcomes of normalised features: caption_image and image_rank / image_hits (per
    caption), text_rank / text_hits (per image), recall_k (the k of each hits column)."""
    scores = text_features @ image_features.T
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(scores)), caption_image_index] = True
    return {"caption_image": caption_image_index.numpy().astype(np.int32),
            "image_rank": best_positive_ranks(scores, positives, chunk_size).numpy().astype(np.int32),
            "text_rank": best_positive_ranks(scores.T, positives.T, chunk_size).numpy().astype(np.int32),
            "image_hits": _hit_matrix(topk_hits(scores, positives, ks, chunk_size), ks),
            "text_hits": _hit_matrix(topk_hits(scores.T, positives.T, ks, chunk_size), ks),
            "recall_k": np.array(list(ks), dtype=np.int32)}


def score(samples: Mapping[str, np.ndarray], params: Mapping) -> dict[str, float]:
    """Return image and text retrieval recall@k for every k of the outcomes' recall_k, from the hits, and their
    mean (DataComp's mean_recall@k).

    Image retrieval: fraction of captions whose image is among the top k images. Text retrieval:
    fraction of images with at least one of their captions among the top k captions.
    """
    metrics = {}
    for column, k in enumerate(np.asarray(samples["recall_k"]).tolist()):
        metrics[f"image_retrieval_recall@{k}"] = float(np.asarray(samples["image_hits"])[:, column].mean())
        metrics[f"text_retrieval_recall@{k}"] = float(np.asarray(samples["text_hits"])[:, column].mean())
        metrics[f"mean_recall@{k}"] = (metrics[f"image_retrieval_recall@{k}"]
                                       + metrics[f"text_retrieval_recall@{k}"]) / 2
    return metrics


def unit_statistics(samples: Mapping[str, np.ndarray], params: Mapping | None = None) -> UnitStatistics:
    """Return the per-image UnitStatistics of the outcomes: a resample draws images and takes their captions
    with them. Per image: 1, its text-retrieval hit at each k, its number of captions and the sum of its
    captions' image-retrieval hits at each k; recall@k of a resample is a ratio of sums, as score computes it."""
    ks = np.asarray(samples["recall_k"]).tolist()
    text_hits = np.asarray(samples["text_hits"], dtype=np.float64)
    caption_image, image_hits = np.asarray(samples["caption_image"]), np.asarray(samples["image_hits"])
    n = len(text_hits)
    captions = np.bincount(caption_image, minlength=n).astype(np.float64)
    caption_hits = np.stack([np.bincount(caption_image, weights=image_hits[:, c].astype(np.float64), minlength=n)
                             for c in range(len(ks))], axis=1).reshape(n, len(ks))
    values = np.concatenate([np.ones((n, 1)), text_hits, captions[:, None], caption_hits], axis=1)[:, None, :]
    nk = len(ks)

    def reduce(sums: np.ndarray) -> dict[str, np.ndarray]:
        metrics = {}
        for c, k in enumerate(ks):
            metrics[f"image_retrieval_recall@{k}"] = ratio(sums[..., 2 + nk + c], sums[..., 1 + nk])
            metrics[f"text_retrieval_recall@{k}"] = ratio(sums[..., 1 + c], sums[..., 0])
            metrics[f"mean_recall@{k}"] = (metrics[f"image_retrieval_recall@{k}"]
                                           + metrics[f"text_retrieval_recall@{k}"]) / 2
        return metrics

    binary = {f"text_retrieval_recall@{k}": text_hits[:, c] > 0 for c, k in enumerate(ks)}
    return UnitStatistics(values, reduce, binary)


def retrieval_metrics(text_features: torch.Tensor, image_features: torch.Tensor, caption_image_index: torch.Tensor,
                      ks: Sequence[int], chunk_size: int = 4096) -> dict[str, float]:
    """Return image and text retrieval recall@k of normalised features (score of their outcomes)."""
    return score(outcomes(text_features, image_features, caption_image_index, ks, chunk_size), {})


def evaluate(model, data, params: dict, progress: bool = True) -> Outcome:
    """Return the retrieval Outcome of model on data['eval'] (images with several captions each)."""
    dataset = data["eval"]
    captions = [caption for per_image in dataset.captions for caption in per_image]
    caption_image_index = torch.tensor([i for i, per_image in enumerate(dataset.captions) for _ in per_image])
    image_features = encode_images(model, dataset, batch_size=params["batch_size"], num_workers=params["num_workers"],
                                   amp=params["amp"], progress=progress, desc="retrieval images", split="eval")
    text_features = encode_texts(model, captions, amp=params["amp"], progress=progress, desc="captions")
    samples = outcomes(text_features, image_features, caption_image_index, params["recall_k"], params["chunk_size"])
    return Outcome(score(samples, params), samples)


TASK = Task(
    name="retrieval", version=2,
    params={"batch_size": integer(256, 1), "num_workers": integer(0, 0), "amp": boolean(False),
            "recall_k": int_list([1, 5, 10], 1), "chunk_size": integer(4096, 1)},
    splits=("eval",), formats=("karpathy", "coco_captions", "clip_benchmark"), data_kind="retrieval",
    metrics=(Metric("image_retrieval_recall@{k}"), Metric("text_retrieval_recall@{k}"), Metric("mean_recall@{k}")),
    evaluate=evaluate, score=score, unit_statistics=unit_statistics,
    description="image-to-text and text-to-image recall@k")
