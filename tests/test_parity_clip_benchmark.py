"""End-to-end parity with CLIP_benchmark: same model, same reader dataset, same metrics.

Ours: silc_eval.tasks.<task>.evaluate(model, dataset, params).
Reference: clip_benchmark.metrics.<task>.evaluate(model.model, DataLoader(dataset), model.tokenizer, ...),
the DataLoader built over OUR reader dataset (ImageFolderClassification exposes `.classes` as
clip_benchmark expects; retrieval batches are collated by retrieval_collate).

Cases: the tiny random checkpoint on the tiny fixture datasets (always), plus every zoo model
on each SynthScenes benchmark of the `quick` suite (generated only when the zoo has models).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import evaluate_task
from silc_eval.data.readers import retrieval_collate
from silc_eval.machinery.prompts import ensemble_prompts
from silc_eval.models.zoo import list_zoo
from silc_eval.tasks import TASKS, retrieval, zeroshot_classification

TOLERANCE = 1e-6
RECALL_K = [1, 5, 10]
TINY = "tiny"


def _zoo_cases() -> list:
    """Return one pytest.param per (zoo model, quick-suite benchmark); empty when the zoo is empty."""
    entries = list_zoo()
    if not entries:
        return []
    from silc_eval.registry import resolve_suite

    benchmarks = [b.name for b in resolve_suite("quick")]
    return [pytest.param(entry.name, name, id=f"zoo-{entry.name}-{name}") for entry in entries for name in benchmarks]


@functools.lru_cache(maxsize=None)
def _load_zoo_model(name: str):
    from silc_eval.models import load_model

    return load_model(name)


def _zoo_benchmark_dataset(benchmark_name: str, model):
    from silc_eval.evaluate.api import build_splits, dataset_root
    from silc_eval.registry import resolve_benchmarks

    (benchmark,) = resolve_benchmarks([benchmark_name])
    root = dataset_root(benchmark.dataset, None, None)
    return benchmark, build_splits(benchmark, root, model.preprocess)["eval"]


def reference_classification(cb, model, dataset, params) -> dict[str, float]:
    loader = DataLoader(dataset, batch_size=params["batch_size"], shuffle=False, num_workers=0)
    return cb.evaluate(model.model, loader, model.tokenizer, dataset.classes, dataset.templates,
                       model.device.type, amp=params["amp"])


def reference_retrieval(model, dataset, params) -> dict[str, float]:
    from clip_benchmark.metrics import zeroshot_retrieval

    loader = DataLoader(dataset, batch_size=params["batch_size"], shuffle=False, num_workers=0,
                        collate_fn=retrieval_collate)
    return zeroshot_retrieval.evaluate(model.model, loader, model.tokenizer, model.device.type,
                                       amp=params["amp"], recall_k_list=list(params["recall_k"]))


def assert_same_metrics(ours: dict, reference: dict, names) -> None:
    for name in names:
        a, b = ours[name], reference[name]
        if math.isnan(b):
            assert math.isnan(a), f"{name}: ours {a}, clip_benchmark NaN"
        else:
            assert a == pytest.approx(b, abs=TOLERANCE), f"{name}: ours {a}, clip_benchmark {b}"


def differs(ours: dict, reference: dict, names) -> bool:
    return any(abs(ours[n] - reference[n]) > 1e-3 for n in names)


# The tiny cases always run; zoo cases exist only when model_zoo/ has models (no empty-parameter skip).
PARITY_CASES = [pytest.param(TINY, "zeroshot_classification", id="tiny-zeroshot_classification"),
                pytest.param(TINY, "retrieval", id="tiny-retrieval")] + _zoo_cases()

CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
RETRIEVAL_METRICS = tuple(f"{kind}_retrieval_recall@{k}" for k in RECALL_K for kind in ("image", "text"))


# ----------------------------------------------------------------------------- tiny model, tiny data

@pytest.fixture(scope="module")
def tiny_classification_dataset(tiny_model, tiny_classification_dir):
    return tiny_classification_dir.dataset(tiny_model.preprocess)


@pytest.fixture(scope="module")
def tiny_retrieval_dataset(tiny_model, tiny_retrieval_dir):
    return tiny_retrieval_dir.dataset(tiny_model.preprocess)


@pytest.fixture(scope="module")
def tiny_classification_ours(tiny_model, tiny_classification_dataset):
    return evaluate_task(zeroshot_classification, tiny_model, tiny_classification_dataset,
                                            dict(zeroshot_classification.TASK.default_params), progress=False)


def test_tiny_classification_metrics_are_not_trivial(tiny_model, tiny_classification_dataset,
                                                    tiny_classification_ours):
    # The fixture (unbalanced classes, model seed) is chosen so the parity test compares informative
    # numbers: no metric sits at 0 or 1, balanced accuracy differs from accuracy, and the random
    # model does not predict one class for every image.
    from silc_eval.features import encode_images

    metrics = tiny_classification_ours
    for name in CLASSIFICATION_METRICS:
        assert 0.0 < metrics[name] < 1.0, name
    assert abs(metrics["acc1"] - metrics["mean_per_class_recall"]) > 1e-3
    assert metrics["acc1"] < metrics["acc5"]
    dataset = tiny_classification_dataset
    classifier = ensemble_prompts(tiny_model, dataset.classes, dataset.templates).T
    predictions = (encode_images(tiny_model, dataset, progress=False) @ classifier).argmax(dim=1)
    assert len(predictions.unique()) >= 3


def test_tiny_classification_parity_check_detects_perturbations(tiny_model, tiny_classification_dir,
                                                                tiny_classification_ours, cb_zeroshot_classification):
    """The parity comparison must be able to fail: a changed protocol on our side is caught."""
    from silc_eval.data.readers import ImageFolderClassification

    fixture = tiny_classification_dir
    params = zeroshot_classification.TASK.default_params
    reference = reference_classification(cb_zeroshot_classification, tiny_model,
                                         fixture.dataset(tiny_model.preprocess), params)
    names = fixture.classnames
    perturbed = {
        "first template only": (names, fixture.templates[:1]),
        "class names rotated": (names[1:] + names[:1], fixture.templates),
    }
    for label, (classnames, templates) in perturbed.items():
        dataset = ImageFolderClassification(fixture.image_root, classnames, templates, transform=tiny_model.preprocess)
        ours = evaluate_task(zeroshot_classification, tiny_model, dataset, dict(params), progress=False)
        assert differs(ours, reference, CLASSIFICATION_METRICS), label
    # Template order does not matter (the ensemble is a mean): still equal.
    reordered = ImageFolderClassification(fixture.image_root, names, fixture.templates[::-1],
                                          transform=tiny_model.preprocess)
    ours = evaluate_task(zeroshot_classification, tiny_model, reordered, dict(params), progress=False)
    assert_same_metrics(ours, reference, CLASSIFICATION_METRICS)
    assert_same_metrics(tiny_classification_ours, ours, CLASSIFICATION_METRICS)


def test_tiny_classification_batch_size_does_not_change_metrics(tiny_model, tiny_classification_dataset,
                                                               tiny_classification_ours):
    params = {**zeroshot_classification.TASK.default_params, "batch_size": 5}
    ours = evaluate_task(zeroshot_classification, tiny_model, tiny_classification_dataset, params, progress=False)
    assert_same_metrics(ours, tiny_classification_ours, CLASSIFICATION_METRICS)


@pytest.fixture(scope="module")
def tiny_retrieval_ours(tiny_model, tiny_retrieval_dataset):
    return evaluate_task(retrieval, tiny_model, tiny_retrieval_dataset, dict(retrieval.TASK.default_params), progress=False)


def test_tiny_retrieval_matches_clip_benchmark_with_uneven_batches(tiny_model, tiny_retrieval_dataset,
                                                                  tiny_retrieval_ours):
    # clip_benchmark's image indices come from the batch boundaries; 12 images in batches of 5.
    params = {**retrieval.TASK.default_params, "batch_size": 5}
    reference = reference_retrieval(tiny_model, tiny_retrieval_dataset, params)
    assert_same_metrics(tiny_retrieval_ours, reference, RETRIEVAL_METRICS)


def test_tiny_retrieval_metrics_are_not_trivial_and_perturbation_is_caught(tiny_model, tiny_retrieval_dataset,
                                                                          tiny_retrieval_ours):
    metrics = tiny_retrieval_ours
    assert 0.0 < metrics["image_retrieval_recall@1"] < metrics["image_retrieval_recall@10"] < 1.0
    assert 0.0 < metrics["text_retrieval_recall@1"] < 1.0
    # Shift every image's captions to the next image: a wrong caption->image index must show.
    shifted = _ShiftedCaptions(tiny_retrieval_dataset)
    ours = evaluate_task(retrieval, tiny_model, shifted, dict(retrieval.TASK.default_params), progress=False)
    reference = reference_retrieval(tiny_model, tiny_retrieval_dataset, retrieval.TASK.default_params)
    assert differs(ours, reference, RETRIEVAL_METRICS)


class _ShiftedCaptions(torch.utils.data.Dataset):
    """A retrieval dataset whose image i carries the captions of image i+1."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.captions = dataset.captions[1:] + dataset.captions[:1]

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index][0], self.captions[index]


# ----------------------------------------------------------------------------- the parity cases

def _resolve_case(model_name: str, benchmark_name: str, request):
    """Return (model, task name, dataset, params) for a case: the tiny fixtures or a zoo model on SynthScenes."""
    if model_name == TINY:
        model = request.getfixturevalue("tiny_model")
        fixture_name = {"zeroshot_classification": "tiny_classification_dataset",
                        "retrieval": "tiny_retrieval_dataset"}[benchmark_name]
        return model, benchmark_name, request.getfixturevalue(fixture_name), dict(TASKS[benchmark_name].default_params)
    model = _load_zoo_model(model_name)
    benchmark, dataset = _zoo_benchmark_dataset(benchmark_name, model)
    return model, benchmark.task, dataset, benchmark.protocol()


@pytest.mark.parametrize("model_name,benchmark_name", PARITY_CASES)
def test_evaluate_matches_clip_benchmark(model_name, benchmark_name, request, cb_zeroshot_classification):
    model, task, dataset, params = _resolve_case(model_name, benchmark_name, request)
    ours = evaluate_task(TASKS[task], model, dataset, params, progress=False)
    if task == "zeroshot_classification":
        reference = reference_classification(cb_zeroshot_classification, model, dataset, params)
        names = CLASSIFICATION_METRICS
    elif task == "retrieval":
        reference = reference_retrieval(model, dataset, params)
        names = tuple(f"{kind}_retrieval_recall@{k}" for k in params["recall_k"] for kind in ("image", "text"))
    else:
        raise AssertionError(f"no clip_benchmark reference for task {task}")
    assert set(names) <= set(ours)
    assert_same_metrics(ours, reference, names)
