"""Heads slid over cached window features give exactly what sliding them over the images gives."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from silc_eval.features import cache as feature_cache
from silc_eval.machinery.dense_segmentation import segment
from silc_eval.machinery.prompts import query_embeddings
from silc_eval.machinery.segmentation_metrics import SegmentationMeter
from silc_eval.machinery.window_features import WindowFeatures, slid_meters, window_features
from silc_eval.tasks import TASKS

CLASSES = [["background"], ["red square"], ["green circle"], ["blue triangle"]]
TEMPLATES = ["a photo of a {c}.", "{c}"]
# Every image is resized to a short side of 32, below the 40-pixel window: windows are clipped to
# the image, so they differ in shape (32x40, 32x32, ...) and are batched by shape.
SIZES = [(40, 72), (32, 32), (24, 56), (20, 20), (48, 36)]
PARAMS = {"short_side": 32, "window": 40, "stride": 16, "batch_size": 3}


class ImagesInMemory(torch.utils.data.Dataset):
    """A segmentation dataset in memory: items (uint8 image, int64 label, index); fingerprint = its content."""

    ignore_index = 255

    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = [torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in SIZES]
        self.labels = [torch.randint(0, len(CLASSES), (h, w), generator=generator) for h, w in SIZES]
        self.labels[0][:4] = 255
        self.classes, self.class_names = CLASSES, [names[0] for names in CLASSES]
        self.num_classes, self.templates = len(CLASSES), TEMPLATES
        content = hashlib.sha256(b"".join(t.numpy().tobytes() for t in (*self.images, *self.labels)))
        self.fingerprint = content.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index], index


def zeroshot_params(variant: str, **extra) -> dict:
    task = TASKS["zeroshot_segmentation"]
    return task.protocol({**PARAMS, "variant": variant, "prob_thd": 0.1, "area_thd": 0.05, **extra}, "test")


def test_pamr_over_cached_features_equals_refining_the_slid_images_and_changes_the_outcome(tiny_model):
    dataset = ImagesInMemory(seed=7)
    params = zeroshot_params("sclip", pamr_steps=5, pamr_dilations=[1, 2])
    text, query_class = query_embeddings(tiny_model, dataset.classes, dataset.templates)
    direct = SegmentationMeter(dataset.num_classes)
    for prediction, label in zip(segment(tiny_model, dataset.images, text, query_class, dataset.num_classes, params),
                                 dataset.labels):
        direct.update(prediction, label)
    task = TASKS["zeroshot_segmentation"]
    refined = task.evaluate(tiny_model, {"eval": dataset}, params, progress=False)
    for field, counts in direct.counts().items():
        assert np.array_equal(refined.samples[field], counts), field
    plain = task.evaluate(tiny_model, {"eval": dataset}, zeroshot_params("sclip"), progress=False)
    assert not np.array_equal(plain.samples["intersect"], refined.samples["intersect"])


@pytest.mark.parametrize("variant", ["vanilla", "sclip", "naclip"])
def test_zeroshot_over_cached_features_equals_sliding_over_the_images(tiny_model, variant):
    dataset, params = ImagesInMemory(), zeroshot_params(variant)
    text, query_class = query_embeddings(tiny_model, dataset.classes, dataset.templates)
    direct = SegmentationMeter(dataset.num_classes)
    for prediction, label in zip(segment(tiny_model, dataset.images, text, query_class, dataset.num_classes, params),
                                 dataset.labels):
        direct.update(prediction, label)
    outcome = TASKS["zeroshot_segmentation"].evaluate(tiny_model, {"eval": dataset}, params, progress=False)
    for field, counts in direct.counts().items():
        assert np.array_equal(outcome.samples[field], counts), field
    assert 0 < outcome.metrics["aAcc"] < 1


def test_a_second_run_reads_the_features_and_gives_the_same_outcome(tiny_model, monkeypatch):
    dataset, params = ImagesInMemory(seed=1), zeroshot_params("sclip")
    task = TASKS["zeroshot_segmentation"]
    feature_cache.reset_stats()
    first = task.evaluate(tiny_model, {"eval": dataset}, params, progress=False)
    assert feature_cache.STATS["misses"] >= 1
    calls = []
    original = tiny_model.dense_features
    monkeypatch.setattr(tiny_model, "dense_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(ImagesInMemory, "__getitem__", lambda self, i: (None, self.labels[i], i))  # no image read
    second = task.evaluate(tiny_model, {"eval": dataset}, params, progress=False)
    assert calls == [] and feature_cache.STATS["hits"] >= 1
    assert first.metrics == second.metrics
    assert all(np.array_equal(first.samples[k], second.samples[k]) for k in first.samples)


def test_other_geometry_or_variant_is_another_entry(tiny_model):
    dataset = ImagesInMemory(seed=2)
    feature_cache.reset_stats()
    for variant, stride in (("sclip", 16), ("sclip", 8), ("vanilla", 16)):
        params = {**zeroshot_params(variant), "stride": stride}
        window_features(tiny_model, dataset, lambda w, v=variant: tiny_model.dense_features(w, v), f"dense:{variant}",
                        params, progress=False)
    assert feature_cache.STATS["misses"] == 3 and feature_cache.STATS["hits"] == 0


def test_a_new_dense_code_version_is_another_entry(tiny_model, monkeypatch):
    from silc_eval.models import dense

    dataset, params = ImagesInMemory(seed=3), zeroshot_params("sclip")
    feature_cache.reset_stats()
    for version in (dense.CODE_VERSION, dense.CODE_VERSION, dense.CODE_VERSION + 1):
        monkeypatch.setattr(dense, "CODE_VERSION", version)
        window_features(tiny_model, dataset, lambda w: tiny_model.dense_features(w, "sclip"), "dense:sclip", params,
                        progress=False)
    assert feature_cache.STATS["misses"] == 2 and feature_cache.STATS["hits"] == 1


def test_window_features_survive_the_cache_format(tiny_model):
    dataset, params = ImagesInMemory(seed=3), zeroshot_params("vanilla")
    with feature_cache.switched_off():
        features = window_features(tiny_model, dataset, tiny_model.patch_tokens, "patch_tokens", params,
                                   progress=False)
    back = WindowFeatures.from_arrays(features.to_arrays())
    assert len(back) == len(features) == len(dataset)
    for stored, restored in zip(features.per_image, back.per_image):
        assert list(stored) == list(restored)
        assert all(torch.equal(stored[box], restored[box]) for box in stored)
    shapes = {tuple(t.shape[:2]) for boxes in features.per_image for t in boxes.values()}
    assert len(shapes) > 1  # the small images give smaller windows


def test_several_heads_share_one_pass_and_each_equals_its_own(tiny_model):
    dataset, params = ImagesInMemory(seed=4), zeroshot_params("vanilla")
    features = window_features(tiny_model, dataset, tiny_model.patch_tokens, "patch_tokens", params, progress=False)
    dim = next(iter(features.per_image[0].values())).shape[-1]
    torch.manual_seed(0)
    weights = [torch.randn(dim, dataset.num_classes) for _ in range(3)]
    heads = [lambda f, w=w: torch.einsum("bhwd,dc->bchw", f, w) for w in weights]

    def argmax(logits):
        return logits.argmax(dim=0)

    together = slid_meters(features, dataset, heads, argmax, params, progress=False)
    for head, meter in zip(heads, together):
        (alone,) = slid_meters(features, dataset, [head], argmax, params, progress=False)
        assert all(np.array_equal(meter.counts()[k], alone.counts()[k]) for k in meter.counts())
    assert not np.array_equal(together[0].counts()["intersect"], together[1].counts()["intersect"])


@pytest.mark.parametrize("grid,size", [((4, 4), (32, 32)), ((3, 5), (20, 37)), ((7, 7), (50, 50))])
def test_window_loss_equals_interpolate_then_cross_entropy(grid, size):
    from silc_eval.machinery.heads import window_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, *grid, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 6, (3, *size), generator=generator)
    labels[0, :5] = 255
    labels[2] = 255  # a window without a valid pixel
    ours = window_loss(logits, labels)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    reference = F.cross_entropy(F.interpolate(logits, size=size, mode="bilinear", align_corners=False), labels,
                                ignore_index=255)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-12)
    assert torch.allclose(ours_grad, reference_grad, rtol=0, atol=1e-12)
    assert ours_grad[2].abs().max() == 0 and ours_grad[0].abs().max() > 0


def test_window_loss_without_valid_pixels_is_zero():
    from silc_eval.machinery.heads import window_loss

    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = window_loss(logits, torch.full((2, 16, 16), 255))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad.abs().max() == 0


def window_entries(fingerprint: str) -> list:
    """Return the metadata files of cached window features of a dataset fingerprint."""
    found = []
    for meta in feature_cache.features_dir().glob("*.json"):
        parts = json.loads(meta.read_text())["key_parts"]
        if parts.get("kind") == "windows" and parts["dataset_fingerprint"] == fingerprint:
            found.append(meta)
    return found


def test_features_over_the_memory_limit_are_streamed_and_give_the_same_outcome(tiny_model, monkeypatch):
    dataset, params = ImagesInMemory(seed=5), zeroshot_params("sclip")
    task = TASKS["zeroshot_segmentation"]
    with feature_cache.switched_off():
        held = task.evaluate(tiny_model, {"eval": dataset}, params, progress=False)
    monkeypatch.setenv("SILC_EVAL_WINDOW_FEATURES_MAX_GB", "1e-9")
    streamed = task.evaluate(tiny_model, {"eval": dataset}, params, progress=False)
    assert window_entries(dataset.fingerprint) == []  # streamed, nothing kept
    assert held.metrics == streamed.metrics
    assert all(np.array_equal(held.samples[k], streamed.samples[k]) for k in held.samples)
    monkeypatch.delenv("SILC_EVAL_WINDOW_FEATURES_MAX_GB")
    task.evaluate(tiny_model, {"eval": dataset}, params, progress=False)
    assert len(window_entries(dataset.fingerprint)) == 1
