"""The image and text feature cache: reuse across evaluations, invalidation by every key part, corruption safety."""

from __future__ import annotations

import copy
import json

import open_clip
import pytest
import torch

from conftest import evaluate_task
from silc_eval.features import cache as feature_cache
from silc_eval.features import compute_image_features, encode_images
from silc_eval.tasks import zeroshot_classification

ZS_PARAMS = {**zeroshot_classification.TASK.default_params, "batch_size": 8}


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    """A fresh, empty cache for one test, with the cache switched on and the counters at zero."""
    monkeypatch.setenv("SILC_EVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(feature_cache.ENV_SWITCH, raising=False)
    feature_cache.reset_stats()
    return tmp_path / "cache" / "features"


@pytest.fixture
def dataset(tiny_model, tiny_classification_dir):
    """The tiny 24-image classification split with the model's eval transform."""
    return tiny_classification_dir.dataset(transform=tiny_model.preprocess)


def computed() -> int:
    return feature_cache.STATS["images_computed"]


def entries(cache_root) -> list[str]:
    return sorted(p.name for p in cache_root.glob("*")) if cache_root.exists() else []


def test_second_evaluation_computes_no_image_features(tiny_model, dataset, cache_root):
    first = evaluate_task(zeroshot_classification, tiny_model, dataset, ZS_PARAMS)
    assert computed() == len(dataset) == 24
    texts = feature_cache.STATS["texts_computed"]
    assert texts == 6 * 3  # 6 classes x 3 templates
    second = evaluate_task(zeroshot_classification, tiny_model, dataset, ZS_PARAMS)
    assert computed() == 24, "the second evaluation ran the image encoder again"
    assert feature_cache.STATS["texts_computed"] == texts, "the second evaluation ran the text encoder again"
    assert feature_cache.STATS["hits"] == 2  # the image features and the class prompts
    assert first == second
    assert len([n for n in entries(cache_root) if n.endswith(".npy")]) == 2


def test_text_features_are_keyed_by_model_and_token_ids(tiny_model, cache_root):
    from silc_eval.features import encode_texts

    prompts = ["a photo of a red square.", "a photo of a green circle."]
    fresh = encode_texts(tiny_model, prompts)
    assert feature_cache.STATS["texts_computed"] == 2
    served = encode_texts(tiny_model, prompts)
    assert feature_cache.STATS["texts_computed"] == 2 and torch.equal(served, fresh)
    reordered = encode_texts(tiny_model, prompts[::-1])  # another prompt list is another entry
    assert feature_cache.STATS["texts_computed"] == 4 and torch.equal(reordered, fresh.flip(0))
    (meta,) = [json.loads(p.read_text()) for p in cache_root.glob("*.json")
               if json.loads(p.read_text())["key_parts"]["tokens_sha256"] ==
               feature_cache.text_key_parts(tiny_model, tiny_model.tokenize(prompts), "fp32")["tokens_sha256"]]
    assert meta["key_parts"]["model_sha256"] == tiny_model.sha256 and meta["shape"][0] == 2
    # a model without a known identity (the trainer's live student) is never served from the cache
    anonymous = copy.copy(tiny_model)
    anonymous.sha256 = "-"
    encode_texts(anonymous, prompts)
    assert feature_cache.STATS["texts_computed"] == 6


def test_cached_features_equal_fresh_ones_and_results_match_without_cache(tiny_model, dataset, cache_root,
                                                                          monkeypatch):
    fresh = compute_image_features(tiny_model, dataset, batch_size=8, progress=False)
    encode_images(tiny_model, dataset, batch_size=8, progress=False)  # fills the cache
    served = encode_images(tiny_model, dataset, batch_size=8, progress=False)
    assert feature_cache.STATS["hits"] == 1 and feature_cache.STATS["images_computed"] == 48
    assert torch.equal(served, fresh)
    with_cache = evaluate_task(zeroshot_classification, tiny_model, dataset, ZS_PARAMS)
    monkeypatch.setenv(feature_cache.ENV_SWITCH, "off")
    without_cache = evaluate_task(zeroshot_classification, tiny_model, dataset, ZS_PARAMS)
    assert with_cache == without_cache


def test_metadata_records_provenance(tiny_model, dataset, cache_root):
    encode_images(tiny_model, dataset, batch_size=8, progress=False, split="val")
    (meta_file,) = cache_root.glob("*.json")
    meta = json.loads(meta_file.read_text())
    parts = meta["key_parts"]
    assert parts["model_sha256"] == tiny_model.sha256
    assert parts["dataset_fingerprint"] == dataset.fingerprint
    assert parts["split"] == "val" and parts["normalization"] == "raw"  # normalised on the way out
    assert "Resize(size=32, interpolation=bicubic" in parts["preprocessing"]
    assert meta["shape"] == [24, 32] and meta["silc_eval_version"] and meta["created_at"]
    assert meta["bytes"] == (cache_root / f"{meta['key']}.npy").stat().st_size


def test_changing_the_preprocessing_recomputes(tiny_model, tiny_classification_dir, cache_root):
    bicubic = tiny_classification_dir.dataset(transform=tiny_model.preprocess)
    bilinear = tiny_classification_dir.dataset(transform=open_clip.image_transform(
        32, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear"))
    a = encode_images(tiny_model, bicubic, batch_size=8, progress=False)
    b = encode_images(tiny_model, bilinear, batch_size=8, progress=False)
    assert computed() == 48
    assert not torch.equal(a, b)
    encode_images(tiny_model, bilinear, batch_size=8, progress=False)
    assert computed() == 48


def test_changing_the_dataset_fingerprint_or_split_recomputes(tiny_model, dataset, cache_root):
    encode_images(tiny_model, dataset, batch_size=8, progress=False)
    changed = copy.copy(dataset)
    changed.fingerprint = "0123456789abcdef"
    encode_images(tiny_model, changed, batch_size=8, progress=False)
    assert computed() == 48
    encode_images(tiny_model, dataset, batch_size=8, progress=False, split="train")
    assert computed() == 72
    encode_images(tiny_model, dataset, batch_size=8, progress=False)
    assert computed() == 72


def test_normalised_and_raw_features_are_one_encoding_and_equal_the_models_own(tiny_model, dataset, cache_root):
    normed = encode_images(tiny_model, dataset, batch_size=8, progress=False)
    raw = encode_images(tiny_model, dataset, batch_size=8, progress=False, normalize=False)
    assert computed() == 24
    assert torch.allclose(normed.norm(dim=1), torch.ones(24), atol=1e-5)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(24), atol=1e-3)
    with feature_cache.switched_off():
        own = compute_image_features(tiny_model, dataset, batch_size=8, progress=False, normalize=True)
        own_raw = compute_image_features(tiny_model, dataset, batch_size=8, progress=False, normalize=False)
    assert torch.equal(normed, own) and torch.equal(raw, own_raw)


def test_truncated_cache_file_is_detected_and_rebuilt(tiny_model, dataset, cache_root, capsys):
    reference = encode_images(tiny_model, dataset, batch_size=8, progress=False)
    (data_file,) = cache_root.glob("*.npy")
    blob = data_file.read_bytes()
    data_file.write_bytes(blob[: len(blob) // 2])
    capsys.readouterr()
    rebuilt = encode_images(tiny_model, dataset, batch_size=8, progress=False)
    assert computed() == 48, "the truncated entry was read instead of being recomputed"
    assert torch.equal(rebuilt, reference)
    err = capsys.readouterr().err
    assert "feature cache" in err and "unreadable" in err and len(err.strip().splitlines()) == 1
    assert data_file.read_bytes() == blob  # rewritten whole
    encode_images(tiny_model, dataset, batch_size=8, progress=False)
    assert computed() == 48


def test_corrupt_bytes_of_the_same_size_are_detected(tiny_model, dataset, cache_root):
    reference = encode_images(tiny_model, dataset, batch_size=8, progress=False)
    (data_file,) = cache_root.glob("*.npy")
    blob = bytearray(data_file.read_bytes())
    blob[-5] ^= 0xFF
    data_file.write_bytes(bytes(blob))
    assert torch.equal(encode_images(tiny_model, dataset, batch_size=8, progress=False), reference)
    assert computed() == 48


def test_data_without_metadata_from_a_killed_run_is_not_read(tiny_model, dataset, cache_root):
    encode_images(tiny_model, dataset, batch_size=8, progress=False)
    (meta_file,) = cache_root.glob("*.json")
    meta_file.unlink()  # the state a run killed between the data and the metadata write leaves
    encode_images(tiny_model, dataset, batch_size=8, progress=False)
    assert computed() == 48
    assert len(list(cache_root.glob("*.json"))) == 1


def test_off_switch_computes_every_time_and_writes_nothing(tiny_model, dataset, cache_root, monkeypatch):
    monkeypatch.setenv(feature_cache.ENV_SWITCH, "off")
    encode_images(tiny_model, dataset, batch_size=8, progress=False)
    encode_images(tiny_model, dataset, batch_size=8, progress=False)
    assert computed() == 48
    assert entries(cache_root) == []


def test_model_without_known_sha256_is_not_cached(tiny_model, dataset, cache_root):
    anonymous = copy.copy(tiny_model)
    anonymous.sha256 = "unknown"
    encode_images(anonymous, dataset, batch_size=8, progress=False)
    encode_images(anonymous, dataset, batch_size=8, progress=False)
    assert computed() == 48
    assert entries(cache_root) == []


def test_transform_without_stable_description_is_not_cached(tiny_model, tiny_classification_dir, cache_root):
    custom = tiny_classification_dir.dataset(transform=lambda image: tiny_model.preprocess(image))
    assert feature_cache.describe_transform(custom.transform) is None
    encode_images(tiny_model, custom, batch_size=8, progress=False)
    encode_images(tiny_model, custom, batch_size=8, progress=False)
    assert computed() == 48
    assert entries(cache_root) == []


def test_cli_no_feature_cache_flag_computes_afresh_and_restores_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    from silc_eval.cli import main

    monkeypatch.delenv(feature_cache.ENV_SWITCH, raising=False)
    args = ["run", "--benchmark", "synthscenes-zeroshot", "--model", f"local-dir:{tiny_model_dir}", "--no-progress"]
    assert main(args + ["--output", str(tmp_path / "a")]) == 0
    feature_cache.reset_stats()
    assert main(args + ["--output", str(tmp_path / "b"), "--no-feature-cache"]) == 0
    assert feature_cache.STATS["images_computed"] == 1000 and feature_cache.STATS["hits"] == 0
    assert feature_cache.STATS["texts_computed"] > 0
    assert feature_cache.enabled()
    feature_cache.reset_stats()
    assert main(args + ["--output", str(tmp_path / "c")]) == 0
    assert feature_cache.STATS["images_computed"] == 0 and feature_cache.STATS["texts_computed"] == 0
    assert feature_cache.STATS["hits"] == 2  # image features and class prompts
