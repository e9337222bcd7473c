"""Compositionality (SugarCrepe, Winoground): the caption-selection task against clip-benchmark's own
`image_caption_selection.evaluate` and dataset classes on the same model and files, Winoground's strict
scores on hand-made similarity matrices, intervals that reduce to the scores, and the readers' errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import (
    RETRIEVAL_COLOURS,
    RETRIEVAL_PLACES,
    RETRIEVAL_SHAPES,
    _noisy_image,
    assert_fails_cleanly,
    evaluate_task,
)
from silc_eval.core.errors import UserError
from silc_eval.data.caption_selection import sugar_crepe_selection, winoground_selection
from silc_eval.evaluate.limit import FirstSamples
from silc_eval.tasks import TASKS, caption_selection

TOLERANCE = 1e-6
SETS = ("add_att", "swap_obj")


def _caption(rng, colour=None, shape=None, place=None) -> tuple[str, str, str, str]:
    colour = colour or RETRIEVAL_COLOURS[rng.integers(len(RETRIEVAL_COLOURS))]
    shape = shape or RETRIEVAL_SHAPES[rng.integers(len(RETRIEVAL_SHAPES))]
    place = place or RETRIEVAL_PLACES[rng.integers(len(RETRIEVAL_PLACES))]
    return f"a {colour} {shape} at the {place}", colour, shape, place


def write_sugar_crepe(root: Path, instances: int = 30, images: int = 12, seed: int = 7) -> Path:
    """Write root/val2017/*.jpg and root/<set>.json for SETS, in the layout clip-benchmark's sugar_crepe reads.
    Images are shared between instances and JSON keys are non-contiguous, as in the release."""
    rng = np.random.default_rng(seed)
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    names = [f"{i:012d}.jpg" for i in range(images)]
    for name in names:
        _noisy_image(rng, rng.uniform(30, 225, size=3)).save(root / "val2017" / name)
    for key in SETS:
        entries = {}
        for n in range(instances):
            caption, colour, shape, place = _caption(rng)
            other = RETRIEVAL_COLOURS[(RETRIEVAL_COLOURS.index(colour) + 1) % len(RETRIEVAL_COLOURS)]
            negative = _caption(rng, colour=other, shape=shape, place=place)[0]
            entries[str(3 * n + 1)] = {"filename": names[rng.integers(images)], "caption": caption,
                                       "negative_caption": negative}
        (root / f"{key}.json").write_text(json.dumps(entries), encoding="utf-8")
    return root


def write_winoground(root: Path, instances: int = 20, seed: int = 8) -> Path:
    """Write root/examples.jsonl and root/images/ex_<n>_img_<k>.png as the facebook/winoground release lays
    them out: two images and two captions (the same words in another order) per line."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for n in range(instances):
        for k in range(2):
            _noisy_image(rng, rng.uniform(30, 225, size=3)).save(root / "images" / f"ex_{n}_img_{k}.png")
        first, colour, shape, place = _caption(rng)
        other = RETRIEVAL_PLACES[(RETRIEVAL_PLACES.index(place) + 1) % len(RETRIEVAL_PLACES)]
        lines.append(json.dumps({"id": n, "caption_0": first, "caption_1": f"a {colour} {shape} at the {other}",
                                 "image_0": f"ex_{n}_img_0", "image_1": f"ex_{n}_img_1", "tag": "Object"}))
    (root / "examples.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def sugar_root(tmp_path_factory) -> Path:
    return write_sugar_crepe(tmp_path_factory.mktemp("sugar_crepe"))


@pytest.fixture(scope="module")
def winoground_root(tmp_path_factory) -> Path:
    return write_winoground(tmp_path_factory.mktemp("winoground"))


def reference(model, dataset) -> dict[str, float]:
    """Return clip-benchmark's image_caption_selection metrics of model on a dataset of (images, captions)."""
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.metrics import image_caption_selection

    loader = DataLoader(dataset, batch_size=7, shuffle=False, num_workers=0, collate_fn=image_captions_collate_fn)
    return image_caption_selection.evaluate(model.model, loader, model.tokenizer, model.device.type, amp=False)


def assert_matches_clip_benchmark(ours: dict, theirs: dict) -> None:
    for mine, name in (("text_score", "text_acc"), ("image_score", "image_acc"), ("group_score", "acc")):
        assert ours[mine] == pytest.approx(theirs[name], abs=TOLERANCE), (mine, ours, theirs)


@pytest.mark.parametrize("key", SETS)
def test_sugar_crepe_matches_clip_benchmark_on_its_own_dataset_class(tiny_model, sugar_root, key):
    from clip_benchmark.datasets.sugar_crepe import SugarCrepe

    ours = evaluate_task(caption_selection, tiny_model,
                         sugar_crepe_selection(sugar_root / f"{key}.json", sugar_root / "val2017",
                                               tiny_model.preprocess))
    theirs = reference(tiny_model, SugarCrepe(str(sugar_root / "val2017"), str(sugar_root / f"{key}.json"),
                                              transform=tiny_model.preprocess))
    assert_matches_clip_benchmark(ours, theirs)
    assert 0.0 < ours["text_score"] < 1.0  # a random model: neither always right nor always wrong
    assert ours["image_score"] == 1.0  # one image per instance


def test_winoground_matches_clip_benchmark(tiny_model, winoground_root):
    dataset = winoground_selection(winoground_root, tiny_model.preprocess)
    images, captions = dataset[3]
    assert images.shape[0] == 2 and captions[0].endswith(json.loads(
        (winoground_root / "examples.jsonl").read_text().splitlines()[3])["caption_0"].split()[-1])
    ours = evaluate_task(caption_selection, tiny_model, dataset)
    assert_matches_clip_benchmark(ours, reference(tiny_model, dataset))
    assert ours["group_score"] <= min(ours["text_score"], ours["image_score"])
    assert 0.0 < ours["text_score"] < 1.0 and 0.0 < ours["image_score"] < 1.0


def winoground_definition(s: np.ndarray) -> tuple[bool, bool]:
    """Winoground's text and image correctness, written from the paper: s[i, c] = score(image i, caption c)."""
    text = s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0]
    image = s[0, 0] > s[1, 0] and s[1, 1] > s[0, 1]
    return bool(text), bool(image)


def test_instance_outcome_is_winogrounds_definition():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(500):
        s = rng.integers(0, 3, size=(2, 2)).astype(np.float64)  # small integers: many exact ties
        expected = winoground_definition(s)
        assert caption_selection.instance_outcome(torch.from_numpy(s)) == expected, s
        seen.add(expected)
    assert seen == {(True, True), (True, False), (False, True), (False, False)}


def test_a_tie_is_never_correct_where_clip_benchmark_gives_it_to_the_first_candidate():
    tied = torch.tensor([[0.5, 0.5]])  # SugarCrepe: the true caption and the negative score the same
    assert caption_selection.instance_outcome(tied) == (False, True)
    assert tied.argmax(dim=1).item() == 0  # clip-benchmark's argmax picks the true caption


def test_more_captions_than_images_need_every_negative_beaten():
    scores = torch.tensor([[0.9, 0.1, 0.95]])  # one image, its caption, two negatives: the second wins
    assert caption_selection.instance_outcome(scores) == (False, True)
    assert caption_selection.instance_outcome(torch.tensor([[0.9, 0.1, 0.85]])) == (True, True)


def test_unit_statistics_reduce_to_the_scores(tiny_model, winoground_root):
    outcome = TASKS["caption_selection"].evaluate(
        tiny_model, {"eval": winoground_selection(winoground_root, tiny_model.preprocess)},
        TASKS["caption_selection"].protocol({}, "test"))
    stats = caption_selection.unit_statistics(outcome.samples)
    reduced = stats.reduce(stats.sums(np.ones((1, stats.n_units))))
    for name, value in outcome.metrics.items():
        assert reduced[name][0, 0] == pytest.approx(value)
        assert stats.binary[name].mean() == pytest.approx(value)


def test_limit_keeps_instances_and_their_images_together(tiny_model, sugar_root):
    full = sugar_crepe_selection(sugar_root / "add_att.json", sugar_root / "val2017", tiny_model.preprocess)
    first = FirstSamples(full, 5)
    assert first.instance_images == full.instance_images[:5] and first.captions == full.captions[:5]
    outcome = TASKS["caption_selection"].evaluate(tiny_model, {"eval": first},
                                                  TASKS["caption_selection"].protocol({}, "test"))
    whole = TASKS["caption_selection"].evaluate(tiny_model, {"eval": full},
                                                TASKS["caption_selection"].protocol({}, "test"))
    assert len(outcome.samples["text_correct"]) == 5
    assert list(outcome.samples["text_correct"]) == list(whole.samples["text_correct"][:5])


def test_shared_images_are_listed_once(sugar_root):
    dataset = sugar_crepe_selection(sugar_root / "add_att.json", sugar_root / "val2017")
    assert len(dataset.image_files) == len(set(dataset.image_files)) < len(dataset)
    used = dataset.image_dataset([2, 0])
    assert used.files == [dataset.image_files[2], dataset.image_files[0]]
    assert used.fingerprint != dataset.image_dataset([0, 2]).fingerprint


def test_bad_layouts_are_one_line_user_errors(tmp_path, sugar_root):
    with pytest.raises(UserError, match=r"expected .*examples\.jsonl"):
        winoground_selection(tmp_path)
    (tmp_path / "examples.jsonl").write_text('{"id": 0, "caption_0": "a"}\n')
    with pytest.raises(UserError, match="caption_1"):
        winoground_selection(tmp_path)
    (tmp_path / "bad.json").write_text('{"1": {"filename": "x.jpg", "caption": "a"}}')
    with pytest.raises(UserError, match="negative_caption"):
        sugar_crepe_selection(tmp_path / "bad.json", sugar_root / "val2017")
    (tmp_path / "missing.json").write_text('{"1": {"filename": "x.jpg", "caption": "a", "negative_caption": "b"}}')
    with pytest.raises(UserError, match=r"missing, e\.g\. .*x\.jpg"):
        sugar_crepe_selection(tmp_path / "missing.json", sugar_root / "val2017")


def _data_root(tmp_path: Path, sugar_root: Path, winoground_root: Path) -> Path:
    data = tmp_path / "data"
    (data / "sugar_crepe").mkdir(parents=True)
    for item in sugar_root.iterdir():
        (data / "sugar_crepe" / item.name).symlink_to(item)
    (data / "winoground").symlink_to(winoground_root)
    return data


def test_the_suite_runs_and_skips_the_sets_that_are_not_there(tmp_path, tiny_model_dir, sugar_root,
                                                              winoground_root):
    from silc_eval.cli import main

    data, out = _data_root(tmp_path, sugar_root, winoground_root), tmp_path / "out"
    code = main(["run", "--suite", "compositionality", "--model", f"local-dir:{tiny_model_dir}", "--data-root",
                 str(data), "--output", str(out), "--no-progress"])
    assert code == 0
    records = {p.stem: json.loads(p.read_text()) for p in (out / "records").rglob("*.json")}
    ran = {r["benchmark"]["name"]: r for r in records.values() if "benchmark" in r and r.get("metrics")}
    assert set(ran) == {"sugarcrepe-add-att", "sugarcrepe-swap-obj", "winoground"}
    assert ran["winoground"]["benchmark"]["main_metric"] == "group_score"
    assert "sugarcrepe" in (out / "leaderboard.md").read_text()


def test_a_malformed_set_is_one_line_with_exit_code_2(tmp_path, capsys, tiny_model_dir, sugar_root,
                                                      winoground_root):
    data = _data_root(tmp_path, sugar_root, winoground_root)
    (data / "sugar_crepe" / "add_att.json").unlink()
    (data / "sugar_crepe" / "add_att.json").write_text("[1, 2]")
    assert_fails_cleanly(capsys, ["run", "--benchmark", "sugarcrepe-add-att", "--model",
                                  f"local-dir:{tiny_model_dir}", "--data-root", str(data), "--output",
                                  str(tmp_path / "out"), "--no-progress"],
                         "is not a SugarCrepe set", watch=[tmp_path / "out"])
