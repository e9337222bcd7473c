"""Dense variants over the same windows run their shared blocks once, and give exactly what each computes alone."""

from __future__ import annotations

import pytest
import torch
from test_window_features import ImagesInMemory, zeroshot_params

from silc_eval.features import cache as feature_cache
from silc_eval.machinery import shared_trunk
from silc_eval.machinery.shared_trunk import Session, SharedTrunk, dense_variant
from silc_eval.machinery.window_features import window_features
from silc_eval.models.dense import VARIANTS
from silc_eval.tasks import TASKS


@pytest.fixture(autouse=True)
def nothing_kept():
    shared_trunk.forget()
    yield
    shared_trunk.forget()


def counts() -> dict[str, int]:
    return dict(shared_trunk.STATS)


def features_of(model, dataset, variant: str, params: dict, shared: bool):
    return window_features(model, dataset, lambda windows: model.dense_features(windows, variant),
                           f"dense:{variant}", params, "eval", progress=False,
                           shared=dense_variant(model, variant) if shared else None)


def assert_same_features(a, b) -> None:
    assert len(a.per_image) == len(b.per_image)
    for one, other in zip(a.per_image, b.per_image):
        assert one.keys() == other.keys()
        for box in one:
            assert torch.equal(one[box], other[box])


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_variant_from_the_trunk_equals_the_variant_computed_in_one_piece(tiny_model, variant):
    images = torch.randn(3, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = tiny_model.dense_features(images, variant)
        staged = tiny_model.dense_from_trunk(tiny_model.dense_trunk(images), variant)
    assert torch.equal(whole, staged)


def test_five_variants_run_the_trunk_once_and_equal_the_features_computed_alone(tiny_model):
    dataset = ImagesInMemory(seed=31)
    params = zeroshot_params("vanilla")
    with feature_cache.switched_off():
        alone = {variant: features_of(tiny_model, dataset, variant, params, shared=False) for variant in VARIANTS}
    before = counts()
    shared = {variant: features_of(tiny_model, dataset, variant, params, shared=True) for variant in VARIANTS}
    after = counts()
    computed = after["batches_computed"] - before["batches_computed"]
    replayed = after["batches_replayed"] - before["batches_replayed"]
    assert computed > 0 and replayed == computed * (len(VARIANTS) - 1)
    for variant in VARIANTS:
        assert_same_features(shared[variant], alone[variant])


def test_nothing_is_kept_with_the_feature_cache_off_or_over_the_bound(tiny_model, monkeypatch):
    dataset = ImagesInMemory(seed=41)
    params = zeroshot_params("vanilla")
    with feature_cache.switched_off():
        before = counts()
        features_of(tiny_model, dataset, "sclip", params, shared=True)
        features_of(tiny_model, dataset, "naclip", params, shared=True)
        assert counts()["batches_replayed"] == before["batches_replayed"]
    monkeypatch.setenv(shared_trunk.LIMIT_ENV, "1e-9")  # one byte
    before = counts()
    features_of(tiny_model, dataset, "sclip", params, shared=True)
    features_of(tiny_model, dataset, "naclip", params, shared=True)
    assert counts()["batches_replayed"] == before["batches_replayed"]


def test_another_geometry_or_window_batch_is_another_window_set(tiny_model):
    dataset = ImagesInMemory(seed=51)
    params = zeroshot_params("vanilla")
    features_of(tiny_model, dataset, "vanilla", params, shared=True)
    for changed in ({**params, "stride": 8}, {**params, "batch_size": 2}):
        before = counts()
        features_of(tiny_model, dataset, "sclip", TASKS["zeroshot_segmentation"].protocol(changed, "test"),
                    shared=True)
        assert counts()["batches_replayed"] == before["batches_replayed"]


def test_a_batch_whose_windows_differ_from_the_recorded_ones_is_computed():
    calls = []

    def trunk(windows):
        calls.append(windows.clone())
        return windows * 2

    shared = SharedTrunk("doubling", trunk, lambda tokens: tokens + 1)
    first, second = torch.zeros(2, 3), torch.ones(2, 3)
    session = Session("key", shared)
    assert torch.equal(session(first), torch.ones(2, 3))
    session.close(complete=True)
    replay = Session("key", shared)
    assert torch.equal(replay(second), torch.full((2, 3), 3.0))  # not the recorded batch's 1.0
    assert len(calls) == 2 and torch.equal(calls[1], second)
    replay.close(complete=True)
    again = Session("key", shared)
    assert torch.equal(again(first), torch.ones(2, 3)) and len(calls) == 2  # the recording itself still serves


def test_an_unfinished_pass_is_not_kept():
    shared = SharedTrunk("identity", lambda windows: windows, lambda tokens: tokens)
    session = Session("key", shared)
    session(torch.zeros(1))
    session.close(complete=False)
    replay = Session("key", shared)
    before = counts()
    replay(torch.zeros(1))
    assert counts()["batches_replayed"] == before["batches_replayed"]


def test_the_window_sample_tells_batches_of_other_images_or_order_apart():
    windows = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    same = shared_trunk.window_sample(windows.clone())
    assert shared_trunk._same_sample(shared_trunk.window_sample(windows), same)
    for other in (windows.flip(0), windows[:15], windows.double(), windows + 1e-3):
        assert not shared_trunk._same_sample(shared_trunk.window_sample(other), same)
