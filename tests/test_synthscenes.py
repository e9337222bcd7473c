"""SynthScenes: determinism, label correctness, on-disk layouts and safe generation."""

from __future__ import annotations

import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import file_sha256
from silc_eval.producers import synthscenes as ss
from silc_eval.producers.synthscenes_render import stuff_texture

SMALL = ss.SynthScenesConfig(seed=3, n_cls_val_per_class=3, n_cls_train_per_class=2, n_retrieval=20,
                             n_seg_train=6, n_seg_val=4, n_train=50, shard_size=20)
OBJECT_WORDS = set(ss.OBJECT_CLASSES)


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    assert ss.write_synthscenes(root, SMALL, progress=False, workers=1) == root
    return root / "synthscenes"


def _scenes(n: int, seed: int = 0, size=(64, 64)):
    rng = np.random.default_rng(seed)
    return [ss.render_scene(rng, size) for _ in range(n)]


# ----------------------------------------------------------------------------- determinism

def test_same_config_gives_byte_identical_files_and_fingerprints(small, tmp_path):
    again = ss.write_synthscenes(tmp_path, SMALL, progress=False, workers=1) / "synthscenes"
    first, second = _hashes(small), _hashes(again)
    assert first == second
    assert len(first) > 100
    for part in ss.PARTS:
        assert ss.part_fingerprint(small / part) == ss.part_fingerprint(again / part)
        assert ss.compute_part_fingerprint(small / part) == ss.part_fingerprint(small / part)


def test_different_seed_gives_different_fingerprints(small, tmp_path):
    other = ss.SynthScenesConfig(**{**SMALL.__dict__, "seed": 4})
    root = ss.write_synthscenes(tmp_path, other, progress=False, workers=1) / "synthscenes"
    for part in ss.PARTS:
        assert ss.part_fingerprint(root / part) != ss.part_fingerprint(small / part)


def test_worker_processes_write_the_same_bytes(small, tmp_path, monkeypatch):
    monkeypatch.setattr(ss, "_MIN_PARALLEL_ITEMS", 0)
    monkeypatch.setattr(ss, "_CHUNK", 7)
    pools = []
    real_pool = ss._run_pool
    def counting_pool(jobs, workers, bar):
        pools.append(len(jobs))
        return real_pool(jobs, workers, bar)

    monkeypatch.setattr(ss, "_run_pool", counting_pool)
    root = ss.write_synthscenes(tmp_path, SMALL, parts=("retrieval", "train"), progress=False, workers=2)
    assert pools == [3, 3]
    for part in ("retrieval", "train"):
        assert _hashes(root / "synthscenes" / part) == _hashes(small / part)


def test_manifest_records_part_config_and_fingerprint(small):
    manifest = ss.read_manifest(small / "train")
    assert manifest["part"] == "train"
    assert manifest["world_version"] == ss.VERSION
    assert manifest["config"] == {"seed": 3, "image_size": 64, "n_train": 50, "shard_size": 20}
    assert re.fullmatch(r"[0-9a-f]{16}", manifest["fingerprint"])
    assert [s["samples"] for s in manifest["shards"]] == [20, 20, 10]


# ----------------------------------------------------------------------------- scenes

@pytest.mark.parametrize("size", [(64, 64), (128, 96)])
def test_mask_matches_image_and_objects(size):
    for scene in _scenes(150, seed=size[0], size=size):
        assert scene.mask.shape == (size[1], size[0]) and scene.mask.dtype == np.uint8
        assert scene.image.size == size and scene.image.mode == "RGB"
        assert set(np.unique(scene.mask)) <= set(range(len(ss.SEGMENTATION_CLASSES)))
        pixels = np.asarray(scene.image).astype(int)
        assert 1 <= len(scene.objects) <= 3
        for obj in scene.objects:
            assert obj.area > 0
            label = ss.SEGMENTATION_CLASSES.index(obj.cls)
            where = scene.mask == label
            assert where.sum() == obj.area
            assert np.array_equal(pixels[where], np.broadcast_to(obj.rgb, (obj.area, 3)))
            assert np.abs(np.array(obj.rgb) - ss.COLOURS[obj.colour]).max() <= 15
            assert obj.size in ss.SIZE_WORDS and obj.position in ss.POSITION_WORDS
        stuff_ids = {ss.SEGMENTATION_CLASSES.index(s) for s in scene.stuff}
        object_ids = {ss.SEGMENTATION_CLASSES.index(o.cls) for o in scene.objects}
        assert set(np.unique(scene.mask)) <= stuff_ids | object_ids


def test_main_class_is_largest_visible_object():
    for scene in _scenes(100, seed=7):
        biggest = max(scene.objects, key=lambda o: o.area)
        assert scene.main_class == biggest.cls == ss.main_class_of(scene.mask)


def test_forced_main_class_is_honoured():
    rng = np.random.default_rng(1)
    for cls in ss.OBJECT_CLASSES:
        scene = ss.render_scene(rng, 64, main_class=cls)
        assert ss.main_class_of(scene.mask) == cls == scene.main_class


def test_stuff_textures_differ():
    rng = np.random.default_rng(0)
    means = {name: stuff_texture(name, rng, 64, 64).mean(axis=(0, 1))
             for name in ss.STUFF_CLASSES}
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(means[a] - means[b]).max() > 25, (a, b)


# ----------------------------------------------------------------------------- captions

def test_captions_name_only_scene_objects_and_are_distinct():
    rng = np.random.default_rng(5)
    for scene in _scenes(200, seed=5):
        captions = ss.make_captions(scene, rng, 5)
        assert len(set(captions)) == 5
        present = {o.cls for o in scene.objects}
        for caption in captions:
            words = set(re.findall(r"[a-z]+", caption))
            assert words & present, caption
            assert not (words & OBJECT_WORDS) - present, caption
            assert caption == caption.lower() and re.fullmatch(r"[a-z ,.]+", caption), caption
            assert "  " not in caption and caption.endswith(".")


def test_vocabulary_covers_every_generated_token():
    vocab = ss.vocabulary()
    assert vocab == sorted(set(vocab)) and "." in vocab and "," in vocab
    rng = np.random.default_rng(11)
    tokens = Counter()
    for scene in _scenes(1500, seed=11):
        for caption in ss.make_captions(scene, rng, 3):
            tokens.update(re.findall(r"[a-z]+|[.,]", caption))
            assert set(caption.split()) <= {w for v in vocab for w in (v, v + ".", v + ",")}
    for template in ss.CLASSIFICATION_TEMPLATES:
        for cls in ss.OBJECT_CLASSES:
            tokens.update(re.findall(r"[a-z]+|[.,]", template.format(c=cls)))
    tokens.update(ss.SEGMENTATION_CLASSES)
    assert set(tokens) <= set(vocab), set(tokens) - set(vocab)
    # every template kind is reachable, so the vocabulary has no dead words either
    assert set(vocab) - set(tokens) == set(), set(vocab) - set(tokens)


# ----------------------------------------------------------------------------- on-disk layouts

def test_classification_layout_is_balanced_imagefolder(small):
    cls_dir = small / "classification"
    names = (cls_dir / "classnames.txt").read_text().splitlines()
    assert names == sorted(ss.OBJECT_CLASSES)
    for split, n in (("train", 2), ("val", 3)):
        folders = sorted(p.name for p in (cls_dir / split).iterdir())
        assert folders == names
        for folder in folders:
            files = list((cls_dir / split / folder).glob("*.png"))
            assert len(files) == n
            assert all(Image.open(f).size == (64, 64) and Image.open(f).mode == "RGB" for f in files)
    templates = (cls_dir / "templates.txt").read_text().splitlines()
    assert templates == list(ss.CLASSIFICATION_TEMPLATES) and all("{c}" in t for t in templates)


def test_classification_label_is_main_object_of_the_image(small):
    for split in ("train", "val"):
        for path in sorted((small / "classification" / split).glob("*/*.png")):
            scene = ss.classification_scene(SMALL, split, int(path.stem))
            assert path.parent.name == ss.main_class_of(scene.mask)
            assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(scene.image))


def test_retrieval_json_is_karpathy_format(small):
    data = json.loads((small / "retrieval" / "dataset_synthscenes.json").read_text())
    assert data["dataset"] == "synthscenes"
    images = data["images"]
    assert [im["imgid"] for im in images] == list(range(20))
    sentids = []
    for im in images:
        assert im["split"] == "test" and im["filepath"] == "images"
        assert (small / "retrieval" / im["filepath"] / im["filename"]).is_file()
        raws = [s["raw"] for s in im["sentences"]]
        assert len(raws) == 5 == len(set(raws))
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for sentence in im["sentences"]:
            assert sentence["imgid"] == im["imgid"]
            assert sentence["tokens"] == re.findall(r"[a-z]+", sentence["raw"])
        sentids += im["sentids"]
    assert sorted(sentids) == list(range(100))


def test_segmentation_pairs_match(small):
    seg = small / "segmentation"
    assert (seg / "classes.txt").read_text().splitlines() == list(ss.SEGMENTATION_CLASSES)
    for split, n in (("train", 6), ("val", 4)):
        images = sorted(p.name for p in (seg / "img_dir" / split).iterdir())
        annotations = sorted(p.name for p in (seg / "ann_dir" / split).iterdir())
        assert images == annotations and len(images) == n
        for name in images:
            image = Image.open(seg / "img_dir" / split / name)
            ann = Image.open(seg / "ann_dir" / split / name)
            assert image.size == ann.size == (128, 96)
            assert image.mode == "RGB" and ann.mode == "L"
            values = np.unique(np.asarray(ann))
            assert values.max() < 15 and any(v >= len(ss.STUFF_CLASSES) for v in values)


def test_train_shards_hold_all_pairs_deterministically(small):
    shards = sorted((small / "train" / "shards").glob("synthscenes-train-*.tar"))
    assert [p.name for p in shards] == [f"synthscenes-train-{i:06d}.tar" for i in range(3)]
    names = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                assert (member.mtime, member.uid, member.gid, member.uname, member.gname, member.mode) == \
                    (0, 0, 0, "", "", 0o644)
                names.append(member.name)
    keys = [f"{i:08d}" for i in range(50)]
    assert names == [f"{k}.{ext}" for k in keys for ext in ("png", "txt")]


def test_train_shards_read_with_webdataset(small):
    wds = pytest.importorskip("webdataset")
    urls = [str(p) for p in sorted((small / "train" / "shards").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "png", "txt"))
    assert len(samples) == 50
    vocab = set(ss.vocabulary())
    for key, image, text in samples:
        assert re.fullmatch(r"\d{8}", key)
        assert image.size == (64, 64)
        assert set(re.findall(r"[a-z]+|[.,]", text)) <= vocab and text.strip()


def test_world_json(small):
    world = json.loads((small / "world.json").read_text())
    assert world["version"] == ss.VERSION and world["seed"] == 3
    assert world["object_classes"] == list(ss.OBJECT_CLASSES)
    assert world["unseen_classes"] == ["star", "crescent"]
    assert sorted(world["seen_classes"] + world["unseen_classes"]) == sorted(ss.OBJECT_CLASSES)
    assert world["segmentation_classes"] == list(ss.STUFF_CLASSES + ss.OBJECT_CLASSES)


# ----------------------------------------------------------------------------- ensure_synthscenes

TINY = ss.SynthScenesConfig(n_cls_val_per_class=1, n_cls_train_per_class=1, n_retrieval=4,
                            n_seg_train=2, n_seg_val=2, n_train=6, shard_size=4)


def test_ensure_is_idempotent(tmp_path, monkeypatch):
    root = ss.ensure_synthscenes(tmp_path, config=TINY, progress=False)
    assert root == tmp_path
    assert sorted(p.name for p in (root / "synthscenes").iterdir()) == \
        ["classification", "retrieval", "segmentation", "world.json"]
    before = _mtimes(root)

    def boom(*args, **kwargs):
        raise AssertionError("regenerated an existing part")

    monkeypatch.setattr(ss, "_WRITERS", {part: boom for part in ss.PARTS})
    ss.ensure_synthscenes(tmp_path, config=TINY, progress=False)
    assert _mtimes(root) == before


def test_ensure_uses_default_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SILC_EVAL_CACHE", str(tmp_path))
    root = ss.ensure_synthscenes(parts=("retrieval",), config=TINY, progress=False)
    assert root == ss.default_cache_root(TINY) and root.parent == tmp_path
    assert root.name.startswith(f"synthscenes-{ss.VERSION}-seed0-")
    assert (root / "synthscenes" / "retrieval" / "manifest.json").is_file()
    assert ss.default_cache_root(ss.SynthScenesConfig(seed=1)) != ss.default_cache_root(TINY)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = ss.render_scene

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ss, "render_scene", flaky)
    with pytest.raises(KeyboardInterrupt):
        ss.ensure_synthscenes(tmp_path, parts=("retrieval",), config=TINY, progress=False)
    assert sorted(p.name for p in (tmp_path / "synthscenes").iterdir()) == ["world.json"]
    monkeypatch.setattr(ss, "render_scene", real)
    ss.ensure_synthscenes(tmp_path, parts=("retrieval",), config=TINY, progress=False)
    assert (tmp_path / "synthscenes" / "retrieval" / "manifest.json").is_file()


def test_part_finished_by_another_process_is_kept(tmp_path, monkeypatch):
    final = tmp_path / "synthscenes" / "retrieval"
    real = ss._WRITERS["retrieval"]

    def racing(out, config, run):
        final.mkdir(parents=True)
        (final / "manifest.json").write_text('{"winner": true}')
        return real(out, config, run)

    monkeypatch.setitem(ss._WRITERS, "retrieval", racing)
    ss.ensure_synthscenes(tmp_path, parts=("retrieval",), config=TINY, progress=False)
    assert json.loads((final / "manifest.json").read_text()) == {"winner": True}
    assert [p.name for p in (tmp_path / "synthscenes").iterdir() if p.name.startswith(".")] == []


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown SynthScenes part"):
        ss.ensure_synthscenes(tmp_path, parts=("nope",), config=TINY, progress=False)
    with pytest.raises(UserError, match="n_train"):
        ss.SynthScenesConfig(n_train=-1)
    ss.ensure_synthscenes(tmp_path, parts=("retrieval",), config=TINY, progress=False)
    other = ss.SynthScenesConfig(**{**TINY.__dict__, "n_retrieval": 5})
    with pytest.raises(UserError, match="generated with"):
        ss.ensure_synthscenes(tmp_path, parts=("retrieval",), config=other, progress=False)
    with pytest.raises(UserError, match="seed 0, not"):
        ss.ensure_synthscenes(tmp_path, parts=("train",), config=ss.SynthScenesConfig(seed=9), progress=False)
