"""Metric functions of the zero-shot tasks on hand-computed cases, and against clip_benchmark / sklearn."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from silc_eval.machinery.prompts import ensemble_prompts
from silc_eval.tasks.retrieval import retrieval_metrics, topk_hits
from silc_eval.tasks.zeroshot_classification import classification_metrics, mean_per_class_recall, outcomes, score

# ----------------------------------------------------------------------------- classification accuracy

# 5 rows x 6 classes; the rank of the target in each row is written beside it.
HAND_LOGITS = torch.tensor([
    [5.0, 1.0, 2.0, 3.0, 4.0, 0.0],  # target 0: rank 1 -> top-1 and top-5 hit
    [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # target 1: rank 2 -> top-5 hit only
    [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # target 5: rank 6 -> miss both
    [0.0, 1.0, 9.0, 2.0, 3.0, 4.0],  # target 2: rank 1 -> hit both
    [3.0, 0.0, 1.0, 9.0, 2.0, 0.5],  # target 0: rank 2 (class 3 wins) -> top-5 hit only
])
HAND_TARGETS = torch.tensor([0, 1, 5, 2, 0])


def test_hand_made_acc1_acc5():
    metrics = classification_metrics(HAND_LOGITS, HAND_TARGETS)
    assert metrics["acc1"] == pytest.approx(2 / 5)
    assert metrics["acc5"] == pytest.approx(4 / 5)


def test_hand_made_mean_per_class_recall_ignores_classes_absent_from_targets():
    # predictions (argmax) = [0, 0, 0, 2, 3]; targets = [0, 1, 5, 2, 0]
    # recall: class 0 -> 1/2, class 1 -> 0, class 2 -> 1, class 5 -> 0; class 3 is predicted
    # but never a target, so it has no recall and does not enter the mean.
    metrics = classification_metrics(HAND_LOGITS, HAND_TARGETS)
    assert metrics["mean_per_class_recall"] == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert metrics["mean_per_class_recall"] != pytest.approx(metrics["acc1"])


def test_outcomes_keep_the_sorted_top5_and_the_metrics_follow_from_them_alone():
    samples = outcomes(HAND_LOGITS, HAND_TARGETS)
    assert samples["top5"].shape == (5, 5) and samples["top5"][2].tolist() == [0, 1, 2, 3, 4]
    assert samples["prediction"].tolist() == [0, 0, 0, 2, 3]
    # the same outcomes, with the logits gone, give the same metrics
    assert score({k: v.copy() for k, v in samples.items()}) == classification_metrics(HAND_LOGITS, HAND_TARGETS)
    # a flipped top-1 changes acc1 but not acc5
    samples["top5"][1, [0, 1]] = samples["top5"][1, [1, 0]]
    assert score(samples)["acc1"] == pytest.approx(3 / 5) and score(samples)["acc5"] == pytest.approx(4 / 5)


def test_acc5_is_nan_with_four_classes():
    logits = torch.tensor([[0.1, 0.9, 0.3, 0.2], [0.8, 0.1, 0.0, 0.3], [0.2, 0.1, 0.0, 0.7]])
    targets = torch.tensor([1, 2, 3])
    metrics = classification_metrics(logits, targets)
    assert math.isnan(metrics["acc5"])
    assert metrics["acc1"] == pytest.approx(2 / 3)
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0 + 1) / 3)


def test_acc5_is_defined_with_exactly_five_classes():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    metrics = classification_metrics(logits, torch.tensor([0]))
    assert metrics["acc1"] == 0.0
    assert metrics["acc5"] == 1.0


# Ties. torch.topk documents only that the k largest values come back (sorted when sorted=True);
# WHICH of several equal logits comes first is unspecified, and on CPU it can change with k
# (e.g. for a row [1, 0, 0, 1, 1], topk(1) and topk(5) need not start with the same index).
# Our topk_accuracies and clip_benchmark's accuracy() both take ONE sorted topk with
# k = max(ks) (capped at the number of classes in ours) and read every k from it, so on the same
# logits they rank tied classes identically. That shared behaviour is what the tests rely on;
# they do not assume which tied index torch puts first. (With torch 2.14 on CPU, rows 0, 1 and 3
# start differently under topk(1) and topk(5), so reading acc1 from a separate topk(1) gives a
# different acc1 here: the comparison with clip_benchmark below would catch that change.)
TIED_LOGITS = torch.tensor([
    [1.0, 0.0, 0.0, 1.0, 1.0, 0.0],  # target 0 tied for first with 3 and 4
    [1.0, 0.0, 1.0, 1.0, 0.0, 0.0],  # target 2 tied for first with 0 and 3
    [1.0, 1.0, 0.0, 1.0, 0.0, 0.0],  # target 1 tied for first with 0 and 3
    [2.0, 0.0, 0.0, 2.0, 2.0, 0.0],  # target 0 tied for first with 3 and 4
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # all six tied: even acc5 depends on the tie order
    [0.0, 3.0, 3.0, 0.0, 0.0, 0.0],  # target 2 tied with 1
    [5.0, 4.0, 4.0, 4.0, 4.0, 4.0],  # target 5 tied for 2nd with four others
])
TIED_TARGETS = torch.tensor([0, 2, 1, 0, 5, 2, 5])


def test_tied_logits_match_clip_benchmark_accuracy(cb_zeroshot_classification):
    ours = classification_metrics(TIED_LOGITS, TIED_TARGETS)
    ref_acc1, ref_acc5 = cb_zeroshot_classification.accuracy(TIED_LOGITS, TIED_TARGETS, topk=(1, 5))
    assert ours["acc1"] == pytest.approx(ref_acc1, abs=1e-7)
    assert ours["acc5"] == pytest.approx(ref_acc5, abs=1e-7)
    # acc1 is read off the same sorted top-5 as acc5, so a top-1 hit is always a top-5 hit.
    top5 = TIED_LOGITS.topk(5, dim=1, largest=True, sorted=True).indices
    assert ours["acc1"] == pytest.approx((top5[:, 0] == TIED_TARGETS).float().mean().item())
    # Rows 0, 1, 2, 3 and 5 have at most three classes tied at the top, so their target is in
    # the top 5 whatever the tie order; row 4 and 6 depend on it.
    assert ours["acc5"] >= 5 / 7 - 1e-7


def test_tied_logits_with_four_classes_match_clip_benchmark(cb_zeroshot_classification):
    # With < 5 classes ours takes topk(4) and clip_benchmark topk(1); the first index must agree.
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [3.0, 3.0, 3.0, 3.0], [1.0, 3.0, 3.0, 3.0], [0.0, 1.0, 1.0, 0.0]])
    targets = torch.tensor([2, 0, 3, 1])
    ours = classification_metrics(logits, targets)
    (ref_acc1,) = cb_zeroshot_classification.accuracy(logits, targets, topk=(1,))
    assert ours["acc1"] == pytest.approx(ref_acc1, abs=1e-7)


def test_tied_logits_balanced_accuracy_uses_first_maximum():
    # torch.argmax documents: with several maximal values the FIRST index is returned; clip_benchmark
    # also predicts with argmax for its balanced accuracy.
    ours = classification_metrics(TIED_LOGITS, TIED_TARGETS)
    expected = balanced_accuracy_score(TIED_TARGETS.numpy(), TIED_LOGITS.argmax(dim=1).numpy())
    first_max = torch.tensor([0, 0, 0, 0, 0, 1, 0])
    assert torch.equal(TIED_LOGITS.argmax(dim=1), first_max)
    assert ours["mean_per_class_recall"] == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(6))
def test_mean_per_class_recall_equals_sklearn_balanced_accuracy(seed):
    generator = torch.Generator().manual_seed(seed)
    n_classes = 7
    # Targets use classes 0..4 only; predictions range over all 7, so classes 5 and 6 can be
    # predicted without ever being a target.
    targets = torch.randint(0, 5, (60,), generator=generator)
    predictions = torch.randint(0, n_classes, (60,), generator=generator)
    predictions[:3] = torch.tensor([5, 6, 6])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that y_pred has classes missing from y_true
        expected = balanced_accuracy_score(targets.numpy(), predictions.numpy())
    assert mean_per_class_recall(predictions, targets) == pytest.approx(expected, abs=1e-6)


def test_mean_per_class_recall_with_unbalanced_perfect_and_empty_classes():
    targets = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    predictions = torch.tensor([0, 0, 0, 0, 0, 2, 1])
    # class 0: 4/4, class 1: 0/1, class 2: 1/2
    assert mean_per_class_recall(predictions, targets) == pytest.approx((1 + 0 + 0.5) / 3)


# ----------------------------------------------------------------------------- retrieval

# 3 images, 2 captions each (caption -> image: 0 0 1 1 2 2). With identity image features the
# score matrix (captions x images) is exactly HAND_SCORES.
HAND_SCORES = torch.tensor([
    [0.9, 0.1, 0.0],  # caption 0 (image 0): image 0 first              -> R@1 hit
    [0.2, 0.8, 0.1],  # caption 1 (image 0): image 1 first, image 0 2nd  -> R@2 hit
    [0.1, 0.7, 0.3],  # caption 2 (image 1): image 1 first              -> R@1 hit
    [0.6, 0.5, 0.4],  # caption 3 (image 1): image 0 first, image 1 2nd  -> R@2 hit
    [0.3, 0.2, 0.1],  # caption 4 (image 2): image 2 last               -> R@3 hit
    [0.0, 0.4, 0.5],  # caption 5 (image 2): image 2 first              -> R@1 hit
])
HAND_CAPTION_IMAGE = torch.tensor([0, 0, 1, 1, 2, 2])
# Text retrieval (per image, rank the 6 captions by the image's column):
#   image 0 column [.9 .2 .1 .6 .3 .0]: caption 0 (its own) first                   -> R@1 hit
#   image 1 column [.1 .8 .7 .5 .2 .4]: caption 1 (image 0's) first, caption 2 2nd  -> R@2 hit
#   image 2 column [.0 .1 .3 .4 .1 .5]: caption 5 first; caption 4 (also its own) is
#     4th-5th, but one positive in the top-k is enough (CLIP-paper any-positive recall)
HAND_EXPECTED = {
    "image_retrieval_recall@1": 3 / 6, "image_retrieval_recall@2": 5 / 6, "image_retrieval_recall@3": 1.0,
    "text_retrieval_recall@1": 2 / 3, "text_retrieval_recall@2": 1.0, "text_retrieval_recall@3": 1.0,
    "image_retrieval_recall@6": 1.0, "text_retrieval_recall@6": 1.0,
    "image_retrieval_recall@10": 1.0, "text_retrieval_recall@10": 1.0,
}
HAND_EXPECTED.update({f"mean_recall@{k}": (HAND_EXPECTED[f"image_retrieval_recall@{k}"]
                                           + HAND_EXPECTED[f"text_retrieval_recall@{k}"]) / 2 for k in (1, 2, 3, 6, 10)})


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 4096])
def test_hand_made_retrieval_recalls(chunk_size):
    metrics = retrieval_metrics(HAND_SCORES, torch.eye(3), HAND_CAPTION_IMAGE, [1, 2, 3, 6, 10], chunk_size)
    assert metrics.keys() == HAND_EXPECTED.keys()
    for name, value in HAND_EXPECTED.items():
        assert metrics[name] == pytest.approx(value), name


def test_topk_hits_per_row_on_hand_case():
    positives = torch.zeros(6, 3, dtype=torch.bool)
    positives[torch.arange(6), HAND_CAPTION_IMAGE] = True
    hits = topk_hits(HAND_SCORES, positives, [1, 2], chunk_size=4)
    assert hits[1].tolist() == [True, False, True, False, False, True]
    assert hits[2].tolist() == [True, True, True, True, False, True]
    text_hits = topk_hits(HAND_SCORES.T, positives.T, [1], chunk_size=2)
    assert text_hits[1].tolist() == [True, False, True]


def _clip_benchmark_recalls(text_features, image_features, caption_image_index, ks):
    """Reference: clip_benchmark's recall_at_k, turned into CLIP-paper recall as its evaluate() does."""
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k

    scores = text_features @ image_features.T
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(scores)), caption_image_index] = True
    reference = {}
    for k in ks:
        reference[f"image_retrieval_recall@{k}"] = (recall_at_k(scores, positives, k) > 0).float().mean().item()
        reference[f"text_retrieval_recall@{k}"] = (recall_at_k(scores.T, positives.T, k) > 0).float().mean().item()
    return reference


@pytest.mark.parametrize("seed,n_images,captions_per_image,chunk_size", [
    (0, 37, 5, 7), (1, 50, 3, 4096), (2, 23, 4, 1), (3, 64, 5, 33),
])
def test_retrieval_matches_clip_benchmark_recall_at_k(seed, n_images, captions_per_image, chunk_size):
    generator = torch.Generator().manual_seed(seed)
    dim = 16
    image_features = F.normalize(torch.randn(n_images, dim, generator=generator), dim=-1)
    # Captions correlated with their image so recalls are far from both 0 and 1.
    caption_image_index = torch.arange(n_images).repeat_interleave(captions_per_image)
    noise = torch.randn(len(caption_image_index), dim, generator=generator)
    text_features = F.normalize(image_features[caption_image_index] + 1.2 * noise, dim=-1)
    ks = [1, 5, 10]
    ours = retrieval_metrics(text_features, image_features, caption_image_index, ks, chunk_size=chunk_size)
    reference = _clip_benchmark_recalls(text_features, image_features, caption_image_index, ks)
    assert ours.keys() == set(reference) | {f"mean_recall@{k}" for k in ks}  # DataComp's mean is ours alone
    for name in reference:
        assert ours[name] == pytest.approx(reference[name], abs=1e-6), name
    assert 0.0 < ours["image_retrieval_recall@1"] < 1.0
    assert ours["image_retrieval_recall@1"] < ours["image_retrieval_recall@10"]


@pytest.mark.parametrize("seed,chunk_size", [(7, 4096), (10, 3), (11, 4096), (15, 9), (16, 4096)])
def test_retrieval_with_repeated_captions_matches_clip_benchmark(seed, chunk_size):
    # Identical captions of different images (SynthScenes has them: "a hexagon.") give exactly
    # tied scores. CLIP_benchmark takes a separate top-k per k, and torch may order tied
    # columns differently for different k; these seeds are cases where slicing one shared
    # top-10 per k gives a different recall, so the test fails on that shortcut.
    generator = torch.Generator().manual_seed(seed)
    n_images, dim = 40, 8
    image_features = F.normalize(torch.randn(n_images, dim, generator=generator), dim=-1)
    caption_image_index = torch.arange(n_images).repeat_interleave(5)
    text_features = F.normalize(image_features[caption_image_index]
                                + 0.3 * torch.randn(len(caption_image_index), dim, generator=generator), dim=-1)
    for group in range(0, n_images, 8):
        shared = F.normalize(image_features[group:group + 8].mean(dim=0), dim=-1)
        text_features[torch.arange(group, group + 8) * 5] = shared
    ks = [1, 5, 10]
    ours = retrieval_metrics(text_features, image_features, caption_image_index, ks, chunk_size=chunk_size)
    reference = _clip_benchmark_recalls(text_features, image_features, caption_image_index, ks)
    for name in reference:
        assert ours[name] == pytest.approx(reference[name], abs=1e-6), name


# ----------------------------------------------------------------------------- class embeddings

def test_class_embeddings_equal_direct_per_class_computation(tiny_model, tiny_classification_dir):
    classnames, templates = tiny_classification_dir.classnames, tiny_classification_dir.templates
    ours = ensemble_prompts(tiny_model, classnames, templates).T
    assert ours.shape == (32, len(classnames))
    columns = []
    with torch.no_grad():
        for name in classnames:
            tokens = tiny_model.tokenize([template.format(c=name) for template in templates])
            prompts = F.normalize(tiny_model.model.encode_text(tokens), dim=-1)
            columns.append(F.normalize(prompts.mean(dim=0), dim=-1))
    expected = torch.stack(columns, dim=1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert torch.allclose(ours.norm(dim=0), torch.ones(len(classnames)), atol=1e-6)
    # The classes must really differ, or the comparison above would prove little.
    assert (ours.T @ ours - torch.eye(len(classnames))).abs().max() > 1e-3


def test_class_embeddings_equal_clip_benchmark_zero_shot_classifier(tiny_model, tiny_classification_dir):
    from clip_benchmark.metrics.zeroshot_classification import zero_shot_classifier

    classnames, templates = tiny_classification_dir.classnames, tiny_classification_dir.templates
    ours = ensemble_prompts(tiny_model, classnames, templates).T
    reference = zero_shot_classifier(tiny_model.model, tiny_model.tokenizer, classnames, templates, "cpu", amp=False)
    assert reference.shape == ours.shape
    torch.testing.assert_close(ours, reference.float(), atol=1e-5, rtol=0)
    # A single template gives a different classifier: the ensembling is really exercised.
    single = ensemble_prompts(tiny_model, classnames, templates[:1]).T
    assert (single - reference).abs().max() > 1e-3
