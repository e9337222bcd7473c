"""ClearCLIP's and NACLIP's own protocols: whole-image inference (window 0) and the preset benchmarks.

The expected settings below were read from the reference repositories (github.com/mc-lan/ClearCLIP:
configs/cfg_*.py, configs/cls_*.txt, clearclip_segmentor.py; github.com/sinahmr/NACLIP: configs/cfg_*.py,
naclip.py); the tests pin the shipped definitions to them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from silc_eval.core.errors import UserError
from silc_eval.core.paths import benchmarks_dir
from silc_eval.data.segmentation import load_class_file
from silc_eval.evaluate.api import build_splits, dataset_root, evaluate_benchmark
from silc_eval.features import cache as feature_cache
from silc_eval.machinery.dense_segmentation import (
    cosine_logits,
    refine_with_prepared,
    segment,
    zeroshot_postprocess,
)
from silc_eval.machinery.prompts import query_embeddings
from silc_eval.machinery.segmentation_metrics import SegmentationMeter
from silc_eval.machinery.window_features import GEOMETRY, window_features
from silc_eval.machinery.windows import WHOLE_IMAGE, normalization_tensors, prepare_image, window_boxes
from silc_eval.registry import load_suites, resolve_benchmarks, resolve_suite
from silc_eval.tasks import TASKS

TASK = TASKS["zeroshot_segmentation"]
CLASSES = [["background"], ["red square"], ["green circle"], ["blue triangle"]]
TEMPLATES = ["a photo of a {c}.", "a drawing of the {c}."]
# Resized to a short side of 36 these give 36x49, 36x36 and 45x36: not multiples of the 8-pixel patch.
SIZES = [(30, 41), (36, 36), (40, 32)]
ORDER = ["voc21", "pc60", "coco-object", "voc20", "cityscapes", "pc59", "ade20k", "coco-stuff171"]


class ImagesInMemory(torch.utils.data.Dataset):
    """A segmentation dataset in memory: items (uint8 image, int64 label, index)."""

    ignore_index = 255

    def __init__(self, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.images = [torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in SIZES]
        self.labels = [torch.randint(0, len(CLASSES), (h, w), generator=generator) for h, w in SIZES]
        self.classes, self.class_names = CLASSES, [names[0] for names in CLASSES]
        self.num_classes, self.templates = len(CLASSES), TEMPLATES
        self.fingerprint = f"in-memory-{seed}"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index], index


def whole_params(**extra) -> dict:
    return TASK.protocol({"variant": "naclip", "short_side": 36, "window": 0, "stride": 16, "batch_size": 4,
                          "logit_scale": 40, "prob_thd": 0.1, **extra}, "test")


# ----------------------------------------------------------------------------- whole-image inference

def test_window_zero_is_one_box_the_whole_image_whatever_the_stride():
    assert WHOLE_IMAGE == 0
    assert window_boxes(37, 50, 0, 112) == [(0, 37, 0, 50)]
    assert window_boxes(448, 336, 0, 1) == [(0, 448, 0, 336)]
    assert len(window_boxes(37, 50, 16, 8)) > 1  # a positive window still slides


def test_window_zero_is_a_valid_parameter_and_stride_zero_is_not():
    assert TASK.protocol({"window": 0}, "test")["window"] == 0
    with pytest.raises(UserError, match="parameter window is -1"):
        TASK.protocol({"window": -1}, "test")
    with pytest.raises(UserError, match="parameter stride is 0"):
        TASK.protocol({"window": 0, "stride": 0}, "test")


def direct_whole_image(model, image: torch.Tensor, text: torch.Tensor, params: dict) -> torch.Tensor:
    """Return NACLIP's whole-image logits (Q, H, W) of a uint8 image, computed without windows.py: one dense
    forward of the resized image, patch logits upsampled to the resized image, then to the original size."""
    mean, std = normalization_tensors(model)
    prepared = prepare_image(image, params["short_side"], mean, std, params["resize"])
    with torch.inference_mode():
        features = model.dense_features(prepared[None], params["variant"])
    logits = cosine_logits(features, text)
    logits = F.interpolate(logits, size=tuple(prepared.shape[-2:]), mode="bilinear", align_corners=False)
    logits = F.interpolate(logits, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[0]
    if params["pamr_steps"]:
        logits = refine_with_prepared(prepared, logits, params)
    return logits


@pytest.mark.parametrize("pamr_steps", [0, 3])
def test_whole_image_mode_equals_one_dense_forward_of_the_resized_image(tiny_model, pamr_steps):
    dataset = ImagesInMemory(seed=11)
    params = whole_params(pamr_steps=pamr_steps, pamr_dilations=[1, 2])
    text, query_class = query_embeddings(tiny_model, dataset.classes, dataset.templates)
    postprocess = zeroshot_postprocess(query_class, dataset.num_classes, params)
    direct = [postprocess(direct_whole_image(tiny_model, image, text, params)) for image in dataset.images]
    assert {tuple(prediction.shape) for prediction in direct} == set(SIZES)

    slid = segment(tiny_model, dataset.images, text, query_class, dataset.num_classes, params)
    assert all(torch.equal(a, b) for a, b in zip(slid, direct))

    expected = SegmentationMeter(dataset.num_classes)
    for prediction, label in zip(direct, dataset.labels):
        expected.update(prediction, label)
    outcome = TASK.evaluate(tiny_model, {"eval": dataset}, params, progress=False)  # over cached window features
    for field, counts in expected.counts().items():
        assert np.array_equal(outcome.samples[field], counts), field

    sliding = segment(tiny_model, dataset.images, text, query_class, dataset.num_classes, {**params, "window": 16})
    assert any(not torch.equal(a, b) for a, b in zip(sliding, direct))  # the mode changes the predictions


def test_whole_image_features_are_their_own_cache_entry(tiny_model):
    assert "window" in GEOMETRY
    dataset = ImagesInMemory(seed=12)
    feature_cache.reset_stats()
    calls = []

    def feature_fn(windows):
        calls.append(tuple(windows.shape[-2:]))
        return tiny_model.dense_features(windows, "naclip")

    for window in (0, 224, 0):  # 224 is larger than every image: the same boxes, another key
        window_features(tiny_model, dataset, feature_fn, "dense:naclip", whole_params(window=window), progress=False)
    assert feature_cache.STATS["misses"] == 2 and feature_cache.STATS["hits"] == 1
    assert set(calls) == {(36, 49), (36, 36), (45, 36)}  # one forward per whole resized image
    assert len(calls) == 2 * len(SIZES)


# ----------------------------------------------------------------------------- the preset definitions

# (short_side, window, stride, logit_scale, prob_thd) per dataset, from the reference configs and segmentors.
CLEARCLIP = {stem: (448, 448, 224, 50, 0.0) for stem in ORDER} | {
    "voc21": (448, 448, 224, 50, 0.5), "pc60": (448, 448, 224, 50, 0.15), "coco-object": (448, 448, 224, 50, 0.4),
    "cityscapes": (448, 224, 224, 50, 0.0)}
NACLIP = {stem: (336, 224, 112, 40, 0.0) for stem in ORDER} | {
    "voc21": (336, 0, 112, 40, 0.1), "pc60": (336, 224, 112, 40, 0.1), "coco-object": (336, 224, 112, 40, 0.1),
    "voc20": (336, 0, 112, 40, 0.0), "cityscapes": (560, 224, 112, 40, 0.0)}
CLEARCLIP_CLASS_FILES = {"voc21": "classes/clearclip/voc21.txt", "voc20": "classes/clearclip/voc20.txt",
                         "coco-object": "classes/clearclip/coco-object.txt"}


def sclip_definition(stem: str) -> dict:
    return yaml.safe_load((benchmarks_dir() / "definitions" / f"{stem}-zeroshot-seg.yaml").read_text())


@pytest.mark.parametrize("method, expected", [("clearclip", CLEARCLIP), ("naclip", NACLIP)])
def test_presets_carry_the_reference_settings_on_the_sclip_data(method, expected):
    suite = resolve_suite(f"paper-{method}")
    assert [b.name for b in suite] == [f"{stem}-zeroshot-seg-{method}-paper" for stem in ORDER]
    for stem, benchmark in zip(ORDER, suite):
        protocol = benchmark.protocol()
        settings = tuple(protocol[k] for k in ("short_side", "window", "stride", "logit_scale", "prob_thd"))
        assert settings == expected[stem], benchmark.name
        assert protocol["variant"] == method and protocol["resize"] == "mmcv" and protocol["area_thd"] is None
        assert (protocol["pamr_steps"], protocol["pamr_dilations"]) == ((10, [8, 16]) if method == "naclip" else
                                                                          (0, [8, 16]))
        assert benchmark.task == "zeroshot_segmentation" and benchmark.main_metric == "mIoU"
        assert benchmark.group == ("zero-shot segmentation (ClearCLIP protocol)" if method == "clearclip" else
                                   "zero-shot segmentation (NACLIP protocol)")
        assert "github.com/" in benchmark.description and "configs/" in benchmark.description
        # the same data as the SCLIP-protocol benchmark; only ClearCLIP's own class files differ
        sclip = sclip_definition(stem)["dataset"]
        own = CLEARCLIP_CLASS_FILES.get(stem) if method == "clearclip" else None
        if own:
            sclip = {k: v for k, v in sclip.items() if k != "background_name"} | {"classes": f"benchmarks:{own}"}
        assert benchmark.dataset == sclip, benchmark.name
    assert load_suites()[f"paper-{method}"].description


def test_clearclip_class_files_differ_from_sclips_where_the_reference_files_do():
    def lines(path: str) -> list[list[str]]:
        return load_class_file(f"benchmarks:{path}", Path("/nonexistent"))

    for stem, path in CLEARCLIP_CLASS_FILES.items():
        own, sclip = lines(path), lines(f"classes/{stem}.txt")
        assert len(own) == len(sclip) and all(len(names) == 1 for names in own)
        changed = {i: names[0] for i, names in enumerate(own) if names != sclip[i]}
        assert changed == {"voc21": {0: "background", 15: "person", 20: "tvmonitor"},
                           "voc20": {14: "person", 19: "tvmonitor"},
                           "coco-object": {0: "background", 1: "person"}}[stem]


def write_voc(root: Path, stems: list[str]) -> int:
    """Write a tiny VOC2012 layout (30x40 JPEG images, palette label maps, the val split file); return how many
    pixels are labelled (not 255)."""
    base = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True)
    rng, labelled = np.random.default_rng(5), 0
    for stem in stems:
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{stem}.jpg")
        values = rng.choice([0, 1, 15, 20, 255], (30, 40)).astype(np.uint8)
        labelled += int((values != 255).sum())
        label = Image.fromarray(values, mode="P")
        label.putpalette([0] * 768)
        label.save(base / "SegmentationClass" / f"{stem}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(stems) + "\n")
    return labelled


@pytest.mark.parametrize("method, window_shapes, first, last", [
    ("naclip", {(336, 448)}, "background", "television monitor"),  # the whole 30x40 image resized to 336x448
    ("clearclip", {(448, 448)}, "background", "tvmonitor"),  # 448x597 in windows of 448
])
def test_voc21_preset_runs_on_a_tiny_voc_layout(tmp_path, tiny_model, monkeypatch, method, window_shapes, first,
                                                last):
    labelled = write_voc(tmp_path, ["2007_000032", "2007_000039"])
    (benchmark,) = resolve_benchmarks([f"voc21-zeroshot-seg-{method}-paper"])
    splits = build_splits(benchmark, dataset_root(benchmark.dataset, tmp_path, None), None)
    assert (splits["eval"].class_names[0], splits["eval"].class_names[-1]) == (first, last)
    shapes, variants = [], []  # the task runs a variant as dense_trunk then dense_from_trunk (shared_trunk.py)
    trunk, finish = tiny_model.dense_trunk, tiny_model.dense_from_trunk
    monkeypatch.setattr(tiny_model, "dense_trunk",
                        lambda windows: shapes.append(tuple(windows.shape[-2:])) or trunk(windows))
    monkeypatch.setattr(tiny_model, "dense_from_trunk",
                        lambda shared, variant: variants.append(variant) or finish(shared, variant))
    refined = []
    if method == "naclip":
        import silc_eval.machinery.dense_segmentation as dense_segmentation

        pamr = dense_segmentation.pamr_refine
        monkeypatch.setattr(dense_segmentation, "pamr_refine",
                            lambda image, logits, steps, dilations: refined.append((steps, tuple(dilations)))
                            or pamr(image, logits, steps, dilations))
    with feature_cache.switched_off():
        evaluation = evaluate_benchmark(tiny_model, benchmark, splits)
    assert set(shapes) == window_shapes and set(variants) == {method} and len(variants) == len(shapes)
    assert refined == ([(10, (8, 16))] * 2 if method == "naclip" else [])
    metrics = evaluation.outcome.metrics
    assert 0.0 <= metrics["mIoU"] <= 1.0 and evaluation.sizes == {"eval": 2}
    assert evaluation.outcome.samples["label"].sum() == labelled  # every labelled pixel of both images scored
