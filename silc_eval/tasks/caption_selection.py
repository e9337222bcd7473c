"""Image-caption selection (compositionality: SugarCrepe, Winoground), CLIP_benchmark's
`image_caption_selection` task with Winoground's scores.

An instance has I images and C captions, caption j true for image j (j < min(I, C)); scores are
cosine similarities of L2-normalised embeddings. Per instance:
- text correct: every image j < min(I, C) scores its own caption strictly above every other caption;
- image correct: every caption j < min(I, C) scores its own image strictly above every other image;
- group correct: both.
text_score, image_score and group_score are their means over instances (Winoground's text, image and
group scores; SugarCrepe's accuracy is text_score, its one-image instances make image_score 1).
CLIP_benchmark names them text_acc, image_acc and acc and decides by argmax, which gives an exact tie
to the first candidate; here a tie is never correct (Winoground's strict inequalities). The two agree
whenever no two candidates of an instance score exactly the same (identical captions or images).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from silc_eval.core.contract import Metric, Outcome, Task
from silc_eval.core.params import boolean, integer
from silc_eval.core.resampling import UnitStatistics, ratio
from silc_eval.features import encode_instance_images, encode_texts

METRICS = ("text_score", "image_score", "group_score")


def instance_outcome(scores: torch.Tensor) -> tuple[bool, bool]:
    """Return (text correct, image correct) of one instance's (images, captions) similarity matrix."""
    n = min(scores.shape)
    own = scores.diagonal()[:n]
    others_caption = scores[:n].clone()
    others_caption[torch.arange(n), torch.arange(n)] = -torch.inf
    others_image = scores[:, :n].clone()
    others_image[torch.arange(n), torch.arange(n)] = -torch.inf
    text = bool((own > others_caption.max(dim=1).values).all())
    image = bool((own > others_image.max(dim=0).values).all())
    return text, image


def outcomes(image_features: torch.Tensor, text_features: torch.Tensor, instance_images, instance_texts
             ) -> dict[str, np.ndarray]:
    """Return the per-instance outcomes: text_correct, image_correct, group_correct (bool) and num_images."""
    text, image, num_images = [], [], []
    for images, texts in zip(instance_images, instance_texts):
        t, i = instance_outcome(image_features[images] @ text_features[texts].T)
        text.append(t)
        image.append(i)
        num_images.append(len(images))
    text, image = np.array(text, dtype=bool), np.array(image, dtype=bool)
    return {"text_correct": text, "image_correct": image, "group_correct": text & image,
            "num_images": np.array(num_images, dtype=np.int32)}


def score(samples: Mapping[str, np.ndarray], params: Mapping | None = None) -> dict[str, float]:
    """Return text_score, image_score and group_score (fractions of instances) of the per-instance outcomes."""
    return {name: float(np.asarray(samples[name.replace("_score", "_correct")]).mean()) for name in METRICS}


def unit_statistics(samples: Mapping[str, np.ndarray], params: Mapping | None = None) -> UnitStatistics:
    """Return the per-instance UnitStatistics: a count and the three correctness indicators."""
    correct = {name: np.asarray(samples[name.replace("_score", "_correct")], dtype=bool) for name in METRICS}
    values = np.stack([np.ones(len(correct["text_score"]))] + [correct[name] for name in METRICS], axis=1)

    def reduce(sums: np.ndarray) -> dict[str, np.ndarray]:
        return {name: ratio(sums[..., 1 + k], sums[..., 0]) for k, name in enumerate(METRICS)}

    return UnitStatistics(values[:, None, :].astype(np.float64), reduce, correct)


def evaluate(model, data, params: dict, progress: bool = True) -> Outcome:
    """Return the caption-selection Outcome of model on data['eval'] (a CaptionSelection set)."""
    dataset = data["eval"]
    image_features, instance_images = encode_instance_images(model, dataset, params["batch_size"],
                                                             params["num_workers"], params["amp"], progress,
                                                             desc="selection images")
    captions = [caption for per_instance in dataset.captions for caption in per_instance]
    text_features = encode_texts(model, captions, amp=params["amp"], progress=progress, desc="selection captions")
    starts = np.cumsum([0] + [len(c) for c in dataset.captions])
    instance_texts = [list(range(starts[n], starts[n + 1])) for n in range(len(dataset.captions))]
    samples = outcomes(image_features, text_features, instance_images, instance_texts)
    return Outcome(score(samples), samples)


TASK = Task(
    name="caption_selection", version=1,
    params={"batch_size": integer(256, 1), "num_workers": integer(0, 0), "amp": boolean(False)},
    splits=("eval",), formats=("sugar_crepe", "winoground"), data_kind="caption_selection",
    metrics=tuple(Metric(name) for name in METRICS),
    evaluate=evaluate, score=score, unit_statistics=unit_statistics,
    description="pick the true caption of an image (and the true image of a caption) among hard negatives")
