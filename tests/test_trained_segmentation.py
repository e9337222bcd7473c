"""Trained segmentation heads: open-vocabulary decoder (seen/unseen) and linear probe, on tiny in-memory data.

Images are 32x32 (the tiny model's size, 4x4 patches of 8) made of four 16x16 quadrants, each
one class painted in that class's colour plus noise, so every window is one whole image and
every patch holds a single class.
"""

import hashlib
import math
import statistics

import numpy as np
import pytest
import torch

from conftest import TINY_CLASSNAMES, TINY_TEMPLATES
from silc_eval.core.errors import UserError
from silc_eval.features import cache as feature_cache
from silc_eval.machinery import heads
from silc_eval.machinery.prompts import class_embeddings
from silc_eval.registry import parse_benchmark
from silc_eval.tasks import TASKS
from silc_eval.tasks import linear_segmentation as linear
from silc_eval.tasks import openvocab_segmentation as openvocab

# Colours of TINY_CLASSNAMES: red square, green circle, blue triangle, yellow star, purple heart, orange moon.
PALETTE = torch.tensor([[220, 30, 30], [30, 200, 40], [30, 40, 220], [230, 220, 30], [150, 40, 170], [240, 140, 20]])
UNSEEN = ["yellow star", "orange moon"]
SIZE = 32
TRAIN_IMAGES = 12


class MemorySegmentation(torch.utils.data.Dataset):
    """A SegmentationDataset look-alike holding its images and label maps in memory."""

    ignore_index = 255

    def __init__(self, images, labels, classes, templates=TINY_TEMPLATES, name="memory"):
        self.images, self.labels = images, labels
        self.classes = [list(names) for names in classes]
        self.class_names = [names[0] for names in self.classes]
        self.num_classes = len(self.classes)
        self.templates = list(templates)
        self.name = name
        # what the content is, as a real dataset's fingerprint says (the feature cache keys on it)
        content = hashlib.sha256()
        for tensor in (*images, *labels):
            content.update(tensor.numpy().tobytes())
        self.fingerprint = content.hexdigest()[:16]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.labels[index], index


def quadrant_scenes(count, seed, class_ids, noise=12.0):
    """Return (uint8 images, int64 labels) of count scenes whose four quadrants take random classes of class_ids.

    Label ids are positions in PALETTE; a 2x2 block of every label map is ignore (255).
    """
    generator = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for _ in range(count):
        picks = torch.tensor(class_ids)[torch.randint(len(class_ids), (2, 2), generator=generator)]
        label = picks.repeat_interleave(SIZE // 2, 0).repeat_interleave(SIZE // 2, 1)
        pixels = PALETTE[label].permute(2, 0, 1).float() + noise * torch.randn(3, SIZE, SIZE, generator=generator)
        label = label.clone()
        label[:2, :2] = 255
        images.append(pixels.clamp(0, 255).to(torch.uint8))
        labels.append(label)
    return images, labels


def tiny_dataset(count, seed, class_ids=range(6), classes=None):
    """Return a MemorySegmentation of quadrant scenes over TINY_CLASSNAMES (or the given class names)."""
    images, labels = quadrant_scenes(count, seed, list(class_ids))
    return MemorySegmentation(images, labels, classes or [[name] for name in TINY_CLASSNAMES])


def tiny_params(module, **overrides):
    """Return module's defaults at the tiny model's size (windows = whole 32x32 images), small and fast."""
    params = {**module.TASK.default_params, "short_side": SIZE, "window": SIZE, "stride": SIZE, "batch_size": 16}
    if module is openvocab:
        params.update(hidden_dim=32, unseen_classes=list(UNSEEN), steps=5, train_batch_size=TRAIN_IMAGES)
    params.update(overrides)
    return params


TRAIN_SPLIT = {}


@pytest.fixture
def with_train_split():
    """Return a function that sets the training split run_head hands to the task (as the evaluate flow does)."""
    yield lambda train: TRAIN_SPLIT.__setitem__("train", train)
    TRAIN_SPLIT.clear()


def run_head(module, model, evaluation, params, progress=False):
    """Return the metrics of a trained-head task on {train: the split set by with_train_split, eval: evaluation}."""
    task = module.TASK
    return task.evaluate(model, {"train": TRAIN_SPLIT["train"], "eval": evaluation},
                         task.protocol(params, "test"), progress=progress).metrics


@pytest.fixture
def captured_steps(monkeypatch):
    """Record (text, labels, text_names) of every call of the open-vocabulary training step."""
    calls = []
    original = openvocab.training_step

    def spy(decoder, features, labels, text, text_names, unseen_names):
        calls.append((text.detach().cpu().clone(), labels.cpu().clone(), list(text_names)))
        return original(decoder, features, labels, text, text_names, unseen_names)

    monkeypatch.setattr(openvocab, "training_step", spy)
    return calls


def test_tasks_are_registered():
    assert TASKS["openvocab_segmentation"] is openvocab.TASK
    assert TASKS["linear_segmentation"] is linear.TASK
    for module in (openvocab, linear):
        assert module.TASK.formats == ("mmseg",) and module.TASK.splits == ("train", "eval")


def test_decoder_never_sees_unseen_text_or_pixels(tiny_model, with_train_split, captured_steps):
    train = tiny_dataset(TRAIN_IMAGES, seed=1)
    with_train_split(train)
    unseen_ids = [TINY_CLASSNAMES.index(name) for name in UNSEEN]
    seen_ids = [i for i in range(len(TINY_CLASSNAMES)) if i not in unseen_ids]
    all_labels = torch.stack(train.labels)
    assert torch.isin(all_labels, torch.tensor(unseen_ids)).sum() > 0  # the training images do hold unseen pixels

    metrics = run_head(openvocab, tiny_model, tiny_dataset(4, seed=2), tiny_params(openvocab), progress=False)

    assert len(captured_steps) == 5
    seen_text = class_embeddings(tiny_model, [[TINY_CLASSNAMES[i]] for i in seen_ids], TINY_TEMPLATES)
    unseen_text = class_embeddings(tiny_model, [[name] for name in UNSEEN], TINY_TEMPLATES)
    # Each step sees every window once (batch = all windows): its label histogram is the whole training set's.
    expected = torch.stack([(all_labels == c).sum() for c in seen_ids])
    for text, labels, names in captured_steps:
        assert names == [TINY_CLASSNAMES[i] for i in seen_ids]
        assert torch.allclose(text, seen_text, atol=1e-6)
        assert (text @ unseen_text.T).max() < 0.9999
        assert torch.equal(torch.bincount(labels[labels != 255].flatten(), minlength=len(seen_ids)), expected)
        assert (labels == 255).sum() == (all_labels == 255).sum() + torch.isin(all_labels,
                                                                                torch.tensor(unseen_ids)).sum()
    assert all(any(m.matches(name) for name in metrics) for m in openvocab.TASK.metrics)
    assert metrics["mIoU_unseen"] is not None and metrics["mIoU_seen"] is not None


def test_training_step_refuses_unseen_text_and_labels(tiny_model):
    decoder = heads.OpenVocabDecoder(32, 16, 1)
    features, text = torch.randn(2, 4, 4, 32), torch.randn(3, 32)
    labels = torch.zeros(2, SIZE, SIZE, dtype=torch.int64)
    loss = openvocab.training_step(decoder, features, labels, text, ["a", "b", "c"], ["d"])
    assert torch.isfinite(loss)
    with pytest.raises(RuntimeError, match="unseen class text"):
        openvocab.training_step(decoder, features, labels, text, ["a", "b", "D"], ["d"])
    labels[0, 0, 0] = 3  # a class index beyond the seen text rows
    with pytest.raises(RuntimeError, match="outside the seen classes"):
        openvocab.training_step(decoder, features, labels, text, ["a", "b", "c"], ["d"])


def test_seen_labels_ignore_unseen_pixels():
    split = openvocab.split_classes([["a"], ["b"], ["c"], ["d"]], [["a"], ["b"], ["c"], ["d"]], ["b", "d"])
    assert split.seen_train_ids == (0, 2) and split.unseen_eval_ids == (1, 3) and not split.cross_dataset
    labels = torch.tensor([[0, 1, 2], [3, 255, 2]], dtype=torch.uint8)
    assert openvocab.seen_labels(labels, split).tolist() == [[0, 255, 1], [255, 255, 1]]


def hand_made_samples(unseen_ids, names=("c0", "c1", "c2", "c3")):
    """Return one image's per-class counts with IoU 1/2, 1, 1/3 and NaN (class 3 never labelled nor predicted),
    from the confusion matrix [[2, 0, 1, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]] (label x prediction)."""
    return {"intersect": np.array([[2, 3, 1, 0]]), "union": np.array([[4, 3, 3, 0]]),
            "pred_label": np.array([[3, 3, 2, 0]]), "label": np.array([[3, 3, 2, 0]]),
            "class_names": np.array(list(names)), "unseen": np.isin(np.arange(4), unseen_ids)}


def test_seen_unseen_and_harmonic_iou():
    metrics = openvocab.score(hand_made_samples(unseen_ids=[2, 3]))
    seen, unseen = 0.75, 1 / 3
    assert metrics["mIoU_seen"] == pytest.approx(seen)
    assert metrics["mIoU_unseen"] == pytest.approx(unseen)  # the NaN class is dropped, not counted as 0
    assert metrics["hIoU"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    assert metrics["mIoU"] == pytest.approx((0.5 + 1 + 1 / 3) / 3)
    assert metrics["aAcc"] == pytest.approx(6 / 8)
    assert metrics["IoU.c2"] == pytest.approx(1 / 3) and metrics["IoU.c3"] is None
    swapped = openvocab.score(hand_made_samples(unseen_ids=[0, 1]))
    assert swapped["hIoU"] == pytest.approx(metrics["hIoU"])
    no_unseen = openvocab.score(hand_made_samples(unseen_ids=[]))
    assert no_unseen["mIoU_unseen"] is None and no_unseen["hIoU"] is None
    only_absent = openvocab.score(hand_made_samples(unseen_ids=[3]))
    assert only_absent["mIoU_unseen"] is None and only_absent["hIoU"] is None


def test_zero_seen_and_unseen_give_zero_harmonic_iou():
    samples = {"intersect": np.array([[0, 0]]), "union": np.array([[8, 8]]), "pred_label": np.array([[4, 4]]),
               "label": np.array([[4, 4]]), "class_names": np.array(["a", "b"]), "unseen": np.array([False, True])}
    metrics = openvocab.score(samples)
    assert metrics["mIoU_seen"] == 0.0 and metrics["mIoU_unseen"] == 0.0 and metrics["hIoU"] == 0.0


def test_cross_dataset_rule():
    eval_classes = [["sky"], ["Tree", "trees"], ["star"], ["road", "street"]]
    train_classes = [["tree"], ["sky", "heavens"], ["road"], ["grass"]]
    split = openvocab.split_classes(eval_classes, train_classes, [])
    assert split.cross_dataset
    assert split.seen_train_ids == (0, 1, 2, 3)  # every training class trains the decoder
    assert split.seen_eval_ids == (0, 1, 3)  # first names match, case-insensitively
    assert split.unseen_eval_ids == (2,)
    with pytest.raises(UserError, match="unseen_classes must be empty"):
        openvocab.split_classes(eval_classes, train_classes, ["star"])


def test_cross_dataset_trains_on_training_classes(tiny_model, with_train_split, captured_steps):
    train_names = ["red square", "green circle", "blue triangle"]
    with_train_split(tiny_dataset(6, seed=3, class_ids=[0, 1, 2], classes=[[n] for n in train_names]))
    evaluation = tiny_dataset(4, seed=4)  # six classes, three of them absent from training
    metrics = run_head(openvocab, tiny_model, evaluation, tiny_params(openvocab, unseen_classes=[], steps=2),
                                 progress=False)
    assert [names for _, _, names in captured_steps] == [train_names, train_names]
    assert metrics["mIoU_seen"] is not None and metrics["hIoU"] is not None


@pytest.mark.parametrize("override, message", [
    ({"unseen_classes": ["pink elephant"]}, "not a class of the dataset"),
    ({"unseen_classes": "yellow star"}, "parameter unseen_classes .* expected a list of names"),
    ({"unseen_classes": list(TINY_CLASSNAMES)}, "at least one seen class"),
    ({"decoder": "convnet"}, "parameter decoder is 'convnet'; expected one of mlp, transformer"),
    ({"steps": -1}, "steps"),
    ({"temperature": 0}, "parameter temperature is 0; expected a number > 0"),
    ({"variant": "fancy"}, "parameter variant is 'fancy'; expected one of vanilla, maskclip"),
])
def test_bad_openvocab_params(tiny_model, with_train_split, override, message):
    with_train_split(tiny_dataset(2, seed=5))
    with pytest.raises(UserError, match=message):
        run_head(openvocab, tiny_model, tiny_dataset(2, seed=6), tiny_params(openvocab, **override), progress=False)


@pytest.mark.parametrize("task", ["linear_segmentation", "openvocab_segmentation"])
def test_missing_training_split_is_a_user_error_when_the_benchmark_is_loaded(tmp_path, task):
    path = tmp_path / "heads.yaml"
    path.write_text(f"name: heads\ntask: {task}\ngroup: g\nmain_metric: mIoU\ndataset:\n  name: d\n"
                    f"  source: data-root\n  format: mmseg\n  images: i\n  annotations: a\n  num_classes: 2\n"
                    f"  classes: c.txt\n")
    with pytest.raises(UserError, match=f"heads.yaml: task {task} needs a train split"):
        parse_benchmark(path)


def test_linear_probe_needs_the_same_classes(tiny_model, with_train_split):
    with_train_split(tiny_dataset(2, seed=8, class_ids=[0, 1], classes=[["red square"], ["green circle"]]))
    with pytest.raises(UserError, match="same classes"):
        run_head(linear, tiny_model, tiny_dataset(2, seed=9), tiny_params(linear), progress=False)


@pytest.fixture
def trained_heads(monkeypatch):
    """Record (losses, state dict) of every head that heads.train_head trains; the feature cache is off, so every
    run trains its heads (what these tests compare)."""
    records = []
    original = heads.train_head

    def spy(head, cache, step_fn, params, device, seed, progress=True):
        losses = original(head, cache, step_fn, params, device, seed, progress)
        records.append((losses, {k: v.detach().clone() for k, v in head.state_dict().items()}))
        return losses

    monkeypatch.setattr(heads, "train_head", spy)
    with feature_cache.switched_off():
        yield records


def test_linear_probe_learns_a_separable_problem(tiny_model, with_train_split):
    three = [[name] for name in TINY_CLASSNAMES[:3]]
    with_train_split(tiny_dataset(24, seed=10, class_ids=[0, 1, 2], classes=three))
    evaluation = tiny_dataset(8, seed=11, class_ids=[0, 1, 2], classes=three)
    metrics = run_head(linear, tiny_model, evaluation, tiny_params(linear, l2=1e-3), progress=False)
    assert metrics["mIoU"] > 0.9 and metrics["aAcc"] > 0.9
    assert all(metrics[f"IoU.{name}"] > 0.8 for name in evaluation.class_names)
    assert not any(name.endswith("_std") or "_seed" in name for name in metrics)  # one solution, no seeds


def test_linear_probe_is_solved_once_and_warns_when_stopped_short(tiny_model, with_train_split, monkeypatch,
                                                                  capsys):
    with_train_split(tiny_dataset(TRAIN_IMAGES, seed=12))
    evaluation = tiny_dataset(4, seed=13)
    fits = []
    original = linear.fit_linear_probe
    monkeypatch.setattr(linear, "fit_linear_probe",
                        lambda *args, **kwargs: fits.append(original(*args, **kwargs)) or fits[-1])
    with feature_cache.switched_off():
        first, second = (run_head(linear, tiny_model, evaluation, tiny_params(linear, l2=1e-3)) for _ in range(2))
    assert first == second and len(fits) == 2
    assert torch.equal(fits[0][0].weight, fits[1][0].weight) and fits[0][1].converged
    assert "L-BFGS stopped" not in capsys.readouterr().err
    for run in range(2):  # the second run reuses the probe the first kept in the cache, and still warns
        run_head(linear, tiny_model, evaluation, tiny_params(linear, l2=1e-3, max_iterations=1))
        assert len(fits) == 3 and not fits[-1][1].converged
        assert "linear_segmentation: L-BFGS stopped after 1 iterations" in capsys.readouterr().err


def test_decoders_are_reproducible_per_seed(tiny_model, with_train_split, trained_heads):
    with_train_split(tiny_dataset(TRAIN_IMAGES, seed=12))
    evaluation = tiny_dataset(4, seed=13)
    runs = [run_head(openvocab, tiny_model, evaluation, tiny_params(openvocab, seeds=[seed], train_batch_size=4))
            for seed in (3, 3, 4)]
    (losses_a, state_a), (losses_b, state_b), (losses_c, state_c) = trained_heads
    assert losses_a == losses_b and runs[0] == runs[1]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert losses_a != losses_c
    assert not torch.equal(state_a["blocks.0.fc1.weight"], state_c["blocks.0.fc1.weight"])


def test_openvocab_decoder_is_reproducible_and_starts_as_zero_shot(tiny_model, with_train_split, trained_heads):
    with_train_split(tiny_dataset(TRAIN_IMAGES, seed=14))
    evaluation = tiny_dataset(4, seed=15)
    params = tiny_params(openvocab, train_batch_size=4, decoder="transformer")
    first, second = (run_head(openvocab, tiny_model, evaluation, params, progress=False) for _ in range(2))
    assert first == second
    assert all(torch.equal(trained_heads[0][1][k], trained_heads[1][1][k]) for k in trained_heads[0][1])
    decoder = heads.OpenVocabDecoder(32, 16, 2, "transformer")
    features = torch.randn(2, 4, 4, 32)
    assert torch.allclose(decoder.embed(features), torch.nn.functional.normalize(features, dim=-1), atol=1e-6)


def test_training_windows_resize_pad_and_cut():
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    image = torch.zeros(3, 20, 40, dtype=torch.uint8)
    label = torch.zeros(20, 40, dtype=torch.int64)
    label[:, 20:] = 1
    windows, labels = heads.training_windows(image, label, short_side=10, window=16, stride=8, mean=mean, std=std)
    # 20x40 -> 10x20, padded to 16x20 (ignore below row 10), windows at columns 0 and 4.
    assert windows.shape == (2, 3, 16, 16) and labels.shape == (2, 16, 16)
    assert (labels[:, 10:] == 255).all()
    assert labels[0, 0].tolist() == [0] * 10 + [1] * 6 and labels[1, 0].tolist() == [0] * 6 + [1] * 10
    assert math.isclose(float(windows[:, :, 10:].abs().sum()), 0.0)


def test_seeds_train_one_decoder_each_and_report_their_mean(tiny_model, with_train_split):
    module = openvocab
    with_train_split(tiny_dataset(TRAIN_IMAGES, seed=16))
    evaluation = tiny_dataset(4, seed=17)
    alone = [run_head(module, tiny_model, evaluation, tiny_params(module, seeds=[seed], train_batch_size=4))
             for seed in (3, 4, 5)]
    task = module.TASK
    outcome = task.evaluate(tiny_model, {"train": TRAIN_SPLIT["train"], "eval": evaluation},
                            task.protocol(tiny_params(module, seeds=[3, 4, 5], train_batch_size=4), "test"),
                            progress=False)
    together = outcome.metrics
    main = "hIoU"
    assert [together[f"{main}_seed{seed}"] for seed in (3, 4, 5)] == [m[main] for m in alone]
    assert together[main] == pytest.approx(statistics.mean(m[main] for m in alone), abs=1e-12)
    assert together[f"{main}_std"] == pytest.approx(statistics.stdev(m[main] for m in alone), abs=1e-12)
    assert together["mIoU_std"] > 0  # the seeds do differ
    assert outcome.samples["intersect"].shape == (3, 4, len(TINY_CLASSNAMES))
    assert outcome.samples["seeds"].tolist() == [3, 4, 5]
    assert task.score(outcome.samples) == together


@pytest.mark.parametrize("module", [openvocab, linear])
def test_a_fitted_head_is_reused_only_for_the_same_windows_parameters_and_code(tiny_model, with_train_split,
                                                                                 monkeypatch, module):
    with_train_split(tiny_dataset(TRAIN_IMAGES, seed=18))
    evaluation = tiny_dataset(4, seed=19)
    params = tiny_params(module, seeds=[3, 4], train_batch_size=4) if module is openvocab else tiny_params(module)
    heads_per_run = 2 if module is openvocab else 1

    def fitted(**overrides):
        before = feature_cache.STATS["heads_fitted"]
        metrics = run_head(module, tiny_model, evaluation, {**params, **overrides})
        return metrics, feature_cache.STATS["heads_fitted"] - before

    first, fits = fitted()
    assert fits == heads_per_run
    again, fits = fitted()
    assert fits == 0 and again == first  # the same windows and parameters: the kept heads
    with feature_cache.switched_off():
        fresh, fits = fitted()
    assert fits == heads_per_run and fresh == first  # fitting afresh gives what the cache served
    if module is openvocab:  # a seed's decoder is kept whatever other seeds ran beside it
        alone, fits = fitted(seeds=[4])
        assert fits == 0 and alone["hIoU"] == first["hIoU_seed4"]
    changed = {"lr": 2e-3} if module is openvocab else {"l2": 2e-3}
    assert fitted(**changed)[1] == heads_per_run
    monkeypatch.setattr(heads, "HEAD_CODE_VERSION", heads.HEAD_CODE_VERSION + 1)
    assert fitted()[1] == heads_per_run
    other = tiny_dataset(TRAIN_IMAGES, seed=20)  # other training windows
    with_train_split(other)
    monkeypatch.undo()
    assert fitted()[1] == heads_per_run
