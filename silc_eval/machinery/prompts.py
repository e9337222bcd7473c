"""Prompt ensembling (benchmarks/PROTOCOLS.md section 1): the one way a name becomes a text embedding.

Every template is filled with the name, each prompt embedding is L2-normalised, the
embeddings are averaged over templates and normalised again (CLIP_benchmark, open_clip).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from silc_eval.features import encode_texts


def ensemble_prompts(model, names: Sequence[str], templates: Sequence[str], amp: bool = False) -> torch.Tensor:
    """Return one L2-normalised, template-ensembled text embedding per name, (len(names), E), on the CPU."""
    prompts = [template.format(c=name) for name in names for template in templates]
    embeddings = encode_texts(model, prompts, amp=amp).view(len(names), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


def query_embeddings(model, classes: Sequence[Sequence[str]], templates: Sequence[str],
                     amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (embeddings (Q, E) of every name of every class, class index (Q,) of each name).

    A class may have several names (synonyms, or the background words of class 0).
    """
    names = [name for names_of_class in classes for name in names_of_class]
    query_class = torch.tensor([c for c, names_of_class in enumerate(classes) for _ in names_of_class])
    return ensemble_prompts(model, names, templates, amp), query_class


def class_embeddings(model, classes: Sequence[Sequence[str]], templates: Sequence[str],
                     amp: bool = False) -> torch.Tensor:
    """Return one normalised embedding per class (C, E): the normalised sum of its names' ensembled embeddings."""
    queries, query_class = query_embeddings(model, classes, templates, amp)
    sums = torch.zeros(len(classes), queries.shape[1]).index_add_(0, query_class, queries)
    return F.normalize(sums, dim=-1)
