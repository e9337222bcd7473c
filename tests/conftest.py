"""Shared session-scoped fixtures: a tiny random open_clip checkpoint and tiny datasets on disk.

Everything is generated from fixed seeds, so every test run sees byte-identical files
and an identical model. The checkpoint is built exactly as the trainer builds one
(word tokenizer -> open_clip_config -> create_model -> save_local_dir), so it loads
through the same `local-dir:` path as trained zoo models.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# ----------------------------------------------------------------------------- fixture content

TINY_CLASSNAMES = ["red square", "green circle", "blue triangle", "yellow star", "purple heart", "orange moon"]
# Folder names deliberately differ from the display names; class index = sorted folder order.
TINY_CLASS_FOLDERS = [f"n{index:03d}" for index in range(len(TINY_CLASSNAMES))]
TINY_TEMPLATES = ["a photo of a {c}.", "a drawing of the {c}.", "a small {c} on a plain background."]
# Unbalanced on purpose (24 images): balanced accuracy then differs from plain accuracy.
TINY_IMAGES_PER_CLASS = [3, 4, 5, 6, 4, 2]
TINY_IMAGE_SIZE = 40

RETRIEVAL_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
RETRIEVAL_SHAPES = ["square", "circle", "triangle", "star"]
RETRIEVAL_PLACES = ["left", "right", "top", "bottom", "middle"]
TINY_RETRIEVAL_IMAGES = 12
TINY_CAPTIONS_PER_IMAGE = 5

TINY_MODEL_SECTION = {
    "embed_dim": 32,
    "vision": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text": {"context_length": 16, "width": 32, "heads": 2, "layers": 2},
}
TINY_MODEL_SEED = 2  # a seed whose random model predicts several classes (metrics away from 0, 1 and chance)
DATA_SEED = 1234


def tiny_captions() -> list[list[str]]:
    """Return TINY_CAPTIONS_PER_IMAGE distinct captions for each retrieval image (no caption repeats anywhere)."""
    captions = []
    for image in range(TINY_RETRIEVAL_IMAGES):
        colour = RETRIEVAL_COLOURS[image % len(RETRIEVAL_COLOURS)]
        shape = RETRIEVAL_SHAPES[image % len(RETRIEVAL_SHAPES)]
        captions.append([f"a {colour} {shape} at the {place} of image number {image}" for place in RETRIEVAL_PLACES])
    return captions


def words_of(texts) -> list[str]:
    """Return the lower-cased words of texts as the word tokenizer splits them (\\w+ | punctuation runs)."""
    return sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]+", text.lower())})


def tiny_vocabulary() -> list[str]:
    """Return every word any fixture text uses (class prompts and captions)."""
    prompts = [t.format(c=c) for c in TINY_CLASSNAMES for t in TINY_TEMPLATES]
    captions = [c for per_image in tiny_captions() for c in per_image]
    return words_of(prompts + captions)


def build_tiny_model_dir(folder: Path, seed: int = TINY_MODEL_SEED) -> Path:
    """Write a tiny random open_clip local-dir checkpoint into folder, as the trainer does; returns folder."""
    from silc_eval.train.model_config import create_model, open_clip_config, save_local_dir
    from silc_eval.train.tokenizer import save_word_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = save_word_tokenizer(tiny_vocabulary(), folder)
    config = open_clip_config(TINY_MODEL_SECTION, vocab_size, (0.5,) * 3, (0.5,) * 3)
    torch.manual_seed(seed)
    model = create_model(config)
    save_local_dir(model, config, folder)
    return folder


def _noisy_image(rng: np.random.Generator, colour: np.ndarray, size: int = TINY_IMAGE_SIZE) -> Image.Image:
    """Return an RGB image: a colour field with pixel noise and one random darker rectangle."""
    pixels = colour[None, None, :] + rng.normal(0.0, 25.0, size=(size, size, 3))
    x0, y0 = rng.integers(0, size // 2, size=2)
    w, h = rng.integers(size // 4, size // 2, size=2)
    pixels[y0:y0 + h, x0:x0 + w] *= rng.uniform(0.2, 0.7)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


@dataclass(frozen=True)
class ClassificationFixture:
    """An ImageFolder split on disk: image_root/<folder>/<image>.png, class index = sorted folder order."""

    root: Path
    image_root: Path
    classnames: list[str]
    templates: list[str]
    classnames_file: Path
    templates_file: Path

    def dataset(self, transform=None):
        """Return the ImageFolderClassification reader over this folder."""
        from silc_eval.data.readers import ImageFolderClassification

        return ImageFolderClassification(self.image_root, self.classnames, self.templates, transform=transform)


@dataclass(frozen=True)
class RetrievalFixture:
    """Images with several captions each and their Karpathy-style JSON (all split "test")."""

    root: Path
    annotation_file: Path
    images_root: Path
    captions: list[list[str]]

    def dataset(self, transform=None, split: str = "test"):
        """Return the KarpathyRetrieval reader over this folder."""
        from silc_eval.data.readers import KarpathyRetrieval

        return KarpathyRetrieval(self.annotation_file, self.images_root, split=split, transform=transform)


def write_classification_dir(root: Path, seed: int = DATA_SEED) -> ClassificationFixture:
    """Write the tiny ImageFolder (6 classes, 2-6 PNGs of 40x40 each) with classnames.txt and templates.txt."""
    rng = np.random.default_rng(seed)
    image_root = Path(root) / "val"
    palette = rng.uniform(30, 225, size=(len(TINY_CLASSNAMES), 3))
    for folder, colour, count in zip(TINY_CLASS_FOLDERS, palette, TINY_IMAGES_PER_CLASS):
        (image_root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            _noisy_image(rng, colour).save(image_root / folder / f"{index:06d}.png")
    classnames_file, templates_file = Path(root) / "classnames.txt", Path(root) / "templates.txt"
    classnames_file.write_text("\n".join(TINY_CLASSNAMES) + "\n", encoding="utf-8")
    templates_file.write_text("\n".join(TINY_TEMPLATES) + "\n", encoding="utf-8")
    return ClassificationFixture(Path(root), image_root, list(TINY_CLASSNAMES), list(TINY_TEMPLATES),
                                 classnames_file, templates_file)


def write_retrieval_dir(root: Path, seed: int = DATA_SEED + 1) -> RetrievalFixture:
    """Write 12 random-coloured PNGs under root/images and root/dataset_tiny.json (Karpathy format)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    captions = tiny_captions()
    entries = []
    for index, per_image in enumerate(captions):
        filename = f"{index:06d}.png"
        _noisy_image(rng, rng.uniform(30, 225, size=3)).save(root / "images" / filename)
        entries.append({"filepath": "images", "filename": filename, "split": "test", "imgid": index,
                        "sentences": [{"raw": caption} for caption in per_image]})
    annotation_file = root / "dataset_tiny.json"
    annotation_file.write_text(json.dumps({"images": entries}), encoding="utf-8")
    return RetrievalFixture(root, annotation_file, root, captions)


# ----------------------------------------------------------------------------- hermetic cache

@pytest.fixture(scope="session", autouse=True)
def hermetic_cache(tmp_path_factory):
    """Point silc-eval's cache (SynthScenes, features) at a fresh folder for the test session.

    Tests then never read state left by an earlier run or by the user's own cache.
    """
    import os

    previous = os.environ.get("SILC_EVAL_CACHE")
    os.environ["SILC_EVAL_CACHE"] = str(tmp_path_factory.mktemp("silc_eval_cache"))
    yield Path(os.environ["SILC_EVAL_CACHE"])
    if previous is None:
        os.environ.pop("SILC_EVAL_CACHE", None)
    else:
        os.environ["SILC_EVAL_CACHE"] = previous


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random open_clip local-dir checkpoint (ViT 32px / 8px patches, 2+2 layers, 32-d embeddings)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """The tiny checkpoint loaded through silc_eval.models.load_model (eval mode, CPU)."""
    from silc_eval.models import load_model

    return load_model(f"local-dir:{tiny_model_dir}")


@pytest.fixture(scope="session")
def tiny_classification_dir(tmp_path_factory) -> ClassificationFixture:
    """A 6-class ImageFolder (24 images, unbalanced) with display names and 3 templates."""
    return write_classification_dir(tmp_path_factory.mktemp("tiny_classification"))


@pytest.fixture(scope="session")
def tiny_retrieval_dir(tmp_path_factory) -> RetrievalFixture:
    """12 images with 5 distinct captions each, in a Karpathy-style JSON."""
    return write_retrieval_dir(tmp_path_factory.mktemp("tiny_retrieval"))


def _numpy_safe_float(value=0.0):
    """float() that also accepts the 1-element arrays clip_benchmark's accuracy() passes it."""
    import builtins

    if isinstance(value, np.ndarray):
        return builtins.float(value.reshape(-1)[0])
    return builtins.float(value)


@pytest.fixture
def cb_zeroshot_classification(monkeypatch):
    """clip_benchmark.metrics.zeroshot_classification, usable with the installed numpy.

    clip-benchmark 1.6.2's accuracy() ends with float(<ndarray of shape (1,)>), which numpy >= 2.4
    rejects (TypeError: only 0-dimensional arrays can be converted to Python scalars), so its
    evaluate() cannot run as shipped. The fixture shadows the builtin float inside that module
    only (for this test) with one that takes the single element; every ranking and counting step
    stays clip_benchmark's own code.
    """
    from clip_benchmark.metrics import zeroshot_classification

    monkeypatch.setattr(zeroshot_classification, "float", _numpy_safe_float, raising=False)
    return zeroshot_classification


def evaluate_task(task, model, data, params=None, progress=False):
    """Return the metrics of a task (a Task or a task module) on data: a dataset (the eval split) or a dict of
    splits; params are checked against the task's contract and completed with its defaults."""
    task = getattr(task, "TASK", task)
    splits = data if isinstance(data, dict) else {"eval": data}
    return task.evaluate(model, splits, task.protocol(params or {}, "test"), progress=progress).metrics


def tree_snapshot(*roots: Path) -> set[str]:
    """Return every path (files and folders, hidden ones included) below roots, as strings."""
    return {str(p) for root in roots if Path(root).exists() for p in Path(root).rglob("*")}


def assert_fails_cleanly(capsys, argv: list[str], expected: str, watch: list[Path] = ()) -> str:
    """Run the CLI in-process on argv and assert the user's-mistake contract: exit code 2, exactly one stderr
    line ('silc-eval: error: ...' matching the regex expected), no traceback, and no path created or removed
    under the watched folders. Returns the line."""
    import re

    from silc_eval.cli import main

    before = tree_snapshot(*watch)
    code = main(list(argv))
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("silc-eval: error: "), err[-3000:]
    assert re.search(expected, lines[0]), lines[0]
    assert tree_snapshot(*watch) == before, sorted(tree_snapshot(*watch) ^ before)
    return lines[0]
