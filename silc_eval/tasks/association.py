"""Image association (WinoGAViL, as DataComp scores it: its eval_utils/wino_eval.py).

Per instance the cue becomes the prompt "A <cue>" ("An <cue>" when the lower-cased cue starts with a vowel,
DataComp's rule); each candidate image is scored by the cosine of its normalised embedding with the prompt's;
the k best candidates are chosen, k = the number of candidates humans associated with the cue (ties broken as
numpy's ascending argsort taken from its end, as DataComp does); the instance's score is the Jaccard index of
the chosen and the associated sets. Metrics: the mean Jaccard index over all instances (jaccard_score), over the
instances with 5-6 candidates (jaccard_score_5-6) and with 10-12 (jaccard_score_10-12, DataComp's main metric).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from silc_eval.core.contract import Metric, Outcome, Task
from silc_eval.core.params import boolean, integer
from silc_eval.core.resampling import UnitStatistics, ratio
from silc_eval.features import encode_instance_images, encode_texts

VOWELS = "aeiou"
SUBSETS = {"jaccard_score": (0, 10**9), "jaccard_score_5-6": (0, 6), "jaccard_score_10-12": (10, 10**9)}


def cue_prompt(cue: str) -> str:
    """Return DataComp's prompt for a cue: 'An <cue>' or 'A <cue>', the cue lower-cased."""
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in VOWELS else f"A {cue}"


def instance_jaccard(scores: np.ndarray, associated: np.ndarray) -> float:
    """Return the Jaccard index of the k best-scored candidates and the k associated ones."""
    k = int(associated.sum())
    chosen = np.zeros(len(scores), dtype=bool)
    chosen[np.argsort(scores)[-k:]] = True
    return float((chosen & associated).sum() / (chosen | associated).sum())


def score(samples: Mapping[str, np.ndarray], params: Mapping | None = None) -> dict[str, float]:
    """Return the mean Jaccard index over all instances and over those with 5-6 and with 10-12 candidates
    (NaN where no instance has that many)."""
    jaccard, candidates = np.asarray(samples["jaccard"]), np.asarray(samples["num_candidates"])
    metrics = {}
    for name, (low, high) in SUBSETS.items():
        chosen = (candidates >= low) & (candidates <= high)
        metrics[name] = float(jaccard[chosen].mean()) if chosen.any() else float("nan")
    return metrics


def unit_statistics(samples: Mapping[str, np.ndarray], params: Mapping | None = None) -> UnitStatistics:
    """Return the per-instance UnitStatistics: per subset its membership and the instance's Jaccard index there."""
    jaccard, candidates = np.asarray(samples["jaccard"]), np.asarray(samples["num_candidates"])
    columns = []
    for low, high in SUBSETS.values():
        member = ((candidates >= low) & (candidates <= high)).astype(np.float64)
        columns += [member, member * jaccard]
    values = np.stack(columns, axis=1)[:, None, :]

    def reduce(sums: np.ndarray) -> dict[str, np.ndarray]:
        return {name: ratio(sums[..., 2 * k + 1], sums[..., 2 * k]) for k, name in enumerate(SUBSETS)}

    return UnitStatistics(values, reduce)


def evaluate(model, data, params: dict, progress: bool = True) -> Outcome:
    """Return the association Outcome of model on data['eval'] (WinoGAViL instances)."""
    dataset = data["eval"]
    image_features, instance_images = encode_instance_images(model, dataset, params["batch_size"],
                                                             params["num_workers"], params["amp"], progress,
                                                             desc="candidate images")
    image_features = image_features.numpy()
    cue_features = encode_texts(model, [cue_prompt(c) for c in dataset.cues], amp=params["amp"],
                                progress=progress, desc="cues").numpy()
    jaccard = [instance_jaccard(image_features[rows] @ cue, np.asarray(associated, dtype=bool))
               for rows, cue, associated in zip(instance_images, cue_features, dataset.associated)]
    samples = {"jaccard": np.asarray(jaccard, dtype=np.float64),
               "num_candidates": np.asarray([len(i) for i in dataset.instance_images], dtype=np.int32)}
    return Outcome(score(samples), samples)


TASK = Task(
    name="association", version=1,
    params={"batch_size": integer(256, 1), "num_workers": integer(0, 0), "amp": boolean(False)},
    splits=("eval",), formats=("winogavil",), data_kind="association",
    metrics=tuple(Metric(name) for name in SUBSETS),
    evaluate=evaluate, score=score, unit_statistics=unit_statistics,
    description="pick the candidate images a cue word is associated with (WinoGAViL's Jaccard index)")
