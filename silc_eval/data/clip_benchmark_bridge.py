"""A bridge to clip-benchmark's own dataset builder (`clip_benchmark.datasets.builder.build_dataset`).

clip-benchmark opens each dataset from a local `dataset_root` (torchvision's on-disk layouts,
plus its own for ImageNet variants and the retrieval sets) and attaches its packaged class
names and templates. We call it with download=False; because some of its branches download
whenever a path is missing regardless of that flag, the paths it reads are checked first
(LAYOUTS, taken from the builder and torchvision's dataset classes) and a missing one is a
one-line UserError naming what belongs there. Only datasets listed in LAYOUTS are bridged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from silc_eval.core.errors import UserError
from silc_eval.core.fingerprint import fingerprint_tree
from silc_eval.data.readers import CaptionRetrieval

# clip-benchmark dataset name -> {split: paths the builder reads, relative to its dataset_root}.
# "*" holds for every split; "{split}" is replaced by the split name. An empty tuple: the root itself.
LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "cifar10": {"*": ("cifar-10-batches-py",)},
    "cifar100": {"*": ("cifar-100-python",)},
    "stl10": {"*": ("stl10_binary",)},
    "mnist": {"*": ("MNIST/raw",)},
    "food101": {"*": ("food-101/images", "food-101/meta/{split}.json")},
    "pets": {"*": ("oxford-iiit-pet/images", "oxford-iiit-pet/annotations/{split}.txt")},
    "cars": {"test": ("stanford_cars/devkit", "stanford_cars/cars_test", "stanford_cars/cars_test_annos_withlabels.mat"),
             "train": ("stanford_cars/devkit/cars_train_annos.mat", "stanford_cars/cars_train")},
    "dtd": {"*": ("dtd/dtd/images", "dtd/dtd/labels/{split}1.txt")},
    "flowers": {"*": ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat")},
    "fgvc_aircraft": {"*": ("fgvc-aircraft-2013b/data/images", "fgvc-aircraft-2013b/data/images_variant_{split}.txt")},
    "gtsrb": {"test": ("gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),
              "train": ("gtsrb/GTSRB/Training",)},
    "sun397": {"*": ("SUN397/ClassName.txt",)},
    "eurosat": {"*": ("eurosat/2750",)},
    "country211": {"*": ("country211/{split}",)},
    "caltech101": {"*": ("caltech101/101_ObjectCategories",)},
    "fer2013": {"*": ("{split}",)},
    "imagenetv2": {"test": ("ImageNetV2-matched-frequency",)},
    "imagenet_sketch": {"test": ()},
    "imagenet-a": {"test": ()},
    "imagenet-r": {"test": ()},
    "imagenet-o": {"test": ()},
    "mscoco_captions": {"test": ("val2014", "coco_test_karpathy.json"), "val": ("val2014", "coco_val_karpathy.json"),
                        "train": ("train2014", "coco_train_karpathy.json")},
    "flickr30k": {"*": ("flickr30k_{split}_karpathy.txt",)},
    "flickr8k": {"*": ("flickr8k_{split}_karpathy.txt",)},
    # multilingual retrieval: the annotation file clip-benchmark's create_annotation_file writes per language
    "crossmodal3600": {"test": ("crossmodal3600_captions-{language}.json",)},
    "xtd10": {"test": ("xtd10-{language}.json",)},
    "flickr30k-200": {"test": ("flickr30k_200-{language}.json",)},
}
# clip-benchmark dataset -> (its module under clip_benchmark.datasets, the folder of its images under the root)
MULTILINGUAL = {"crossmodal3600": ("crossmodal3600", "xm3600/images"), "xtd10": ("xtd10", "xtd10/images"),
                "flickr30k-200": ("flickr30k_200", "flickr30k-200/images")}
MULTILINGUAL_DATASETS = tuple(MULTILINGUAL)
RETRIEVAL_DATASETS = ("mscoco_captions", "flickr30k", "flickr8k") + MULTILINGUAL_DATASETS


def supported_languages(name: str) -> list[str]:
    """Return the language codes clip-benchmark's module for multilingual dataset name supports."""
    import importlib

    try:
        module = importlib.import_module(f"clip_benchmark.datasets.{MULTILINGUAL[name][0]}")
    except ImportError as exc:  # xtd10 and flickr30k_200 import `requests`, which clip-benchmark does not declare
        raise UserError(f"clip-benchmark's '{name}' module cannot be imported ({exc}); expected its imports "
                        f"installed: pip install {exc.name or 'requests'}") from None
    return list(module.SUPPORTED_LANGUAGES)


def check_name(name: str) -> None:
    """Raise a UserError unless clip-benchmark dataset `name` is one the bridge opens offline."""
    if name not in LAYOUTS:
        hint = " (use format: wds for clip-benchmark's webdataset layout)" if name.startswith("wds/") else ""
        raise UserError(f"clip-benchmark dataset '{name}' is not bridged{hint}; expected one of "
                        f"{', '.join(sorted(LAYOUTS))}")


def layout_paths(name: str, split: str, language: str | None = None) -> list[str]:
    """Return the paths (relative to the dataset_root) clip-benchmark's builder reads for name, split and, for a
    multilingual dataset, language."""
    check_name(name)
    layout = LAYOUTS[name]
    if split not in layout and "*" not in layout:
        raise UserError(f"clip-benchmark dataset '{name}' has no split '{split}' here; expected one of "
                        f"{', '.join(sorted(layout))}")
    if name in MULTILINGUAL and not language:
        raise UserError(f"clip-benchmark dataset '{name}' is multilingual: expected a language")
    return [p.format(split=split, language=language) for p in layout.get(split, layout.get("*", ()))]


def _labels(ds) -> list[int]:
    """Return the class index of every sample of a clip-benchmark dataset, without decoding images.

    torchvision's datasets keep labels in one of a few attributes; when none is there the
    samples are read one by one (slow, but correct).
    """
    for attribute in ("targets", "labels", "_labels"):
        values = getattr(ds, attribute, None)
        if values is not None and len(values) == len(ds):
            labels = [int(v) for v in values]
            break
    else:
        samples = getattr(ds, "_samples", None) or getattr(ds, "samples", None)
        fnames = getattr(ds, "fnames", None)  # ImageNet-V2: the label is the folder name
        if samples is not None and len(samples) == len(ds):
            labels = [int(s[1]) for s in samples]
        elif fnames is not None and len(fnames) == len(ds):
            labels = [int(Path(f).parent.name) for f in fnames]
        else:
            return [int(ds[i][1]) for i in range(len(ds))]
    target_transform = getattr(ds, "target_transform", None)
    return [int(target_transform(y)) for y in labels] if target_transform else labels


class ClipBenchmarkClassification(Dataset):
    """A classification dataset opened by clip-benchmark's builder, with its class names and templates.

    Items are (transformed image, class index), exactly as the builder's dataset yields them.
    """

    def __init__(self, ds, name: str, root: Path, split: str):
        self.dataset = ds
        self.classes = [str(c) for c in ds.classes]
        templates = ds.templates
        if isinstance(templates, dict) or not all("{c}" in t for t in templates):
            raise UserError(f"clip-benchmark's templates for '{name}' are not '{{c}}' prompts; expected a list "
                            f"like 'a photo of a {{c}}.'")
        self.templates = list(templates)
        self.targets = _labels(ds)
        digest = hashlib.sha256(f"{name}\0{split}\0{fingerprint_tree(root)}\0{self.targets}".encode())
        self.fingerprint = digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


def _multilingual_image(path: str, folder: Path, name: str) -> Path:
    """Return an image of a multilingual annotation file: the path it names (create_annotation_file writes them
    joined to the root it was given), else the file of that name in the dataset's image folder under folder."""
    listed = Path(path) if Path(path).is_absolute() else folder / path
    return listed if listed.is_file() else folder / MULTILINGUAL[name][1] / Path(path).name


def _retrieval_items(ds, name: str, folder: Path) -> tuple[list[Path], list[list[str]]]:
    """Return (image files, captions per image) of a clip-benchmark retrieval dataset, in its order."""
    if name == "mscoco_captions":  # torchvision CocoCaptions over clip-benchmark's Karpathy COCO-format JSON
        files = [Path(ds.root) / ds.coco.loadImgs(i)[0]["file_name"] for i in ds.ids]
        return files, [list(ds._load_target(i)) for i in ds.ids]
    if name in MULTILINGUAL:  # one caption (a string) per image, as the builder's items wrap it: [caption]
        return [_multilingual_image(image, folder, name) for image, _ in ds.data], [[c] for _, c in ds.data]
    return [Path(ds.root) / image for image, _ in ds.data], [list(c) for _, c in ds.data]


def _call_builder(name: str, folder: Path, split: str, transform: Callable | None, task: str,
                  language: str | None = None):
    """Return clip-benchmark's dataset, its chatter silenced and its failures turned into UserErrors."""
    try:
        from clip_benchmark.datasets.builder import build_dataset
    except ImportError as exc:  # clip-benchmark 1.6.2 imports `requests` without declaring it
        raise UserError(f"clip-benchmark's dataset builder cannot be imported ({exc}); expected its imports "
                        f"installed: pip install {exc.name or 'requests'}") from None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return build_dataset(name, root=str(folder), transform=transform, split=split, download=False,
                                 task=task, language=language or "en")
    except Exception as exc:  # the builder signals a bad layout with asserts, RuntimeError, OSError, ValueError
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"clip-benchmark could not open '{name}' from {folder} ({detail}); expected "
                        f"{', '.join(str(folder / p) for p in layout_paths(name, split, language)) or folder}"
                        ) from None


def build_clip_benchmark(dataset: dict, root: Path, transform: Callable | None, split: str | None = None):
    """Return the dataset a `clip_benchmark` declaration names, read by clip-benchmark's builder from root/<root>.

    Classification datasets come back as ClipBenchmarkClassification, retrieval ones
    (mscoco_captions, flickr30k, flickr8k) as CaptionRetrieval with clip-benchmark's caption grouping.
    """
    name, split, language = dataset["dataset"], split or dataset.get("split", "test"), dataset.get("language")
    folder = Path(root) / dataset["root"]
    missing = [p for p in [folder] + [folder / p for p in layout_paths(name, split, language)] if not p.exists()]
    if missing:
        raise UserError(f"clip-benchmark dataset '{name}' not found: expected {', '.join(map(str, missing))}")
    if name in RETRIEVAL_DATASETS:
        ds = _call_builder(name, folder, split, None, "zeroshot_retrieval", language)
        files, captions = _retrieval_items(ds, name, folder)
        annotation_file = folder / layout_paths(name, split, language)[-1]
        return CaptionRetrieval(files, captions, annotation_file, str(folder), transform)
    ds = _call_builder(name, folder, split, transform, "zeroshot_classification")
    return ClipBenchmarkClassification(ds, name, folder, split)
