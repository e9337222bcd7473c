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
}
RETRIEVAL_DATASETS = ("mscoco_captions", "flickr30k", "flickr8k")


def check_name(name: str) -> None:
    """Raise a UserError unless clip-benchmark dataset `name` is one the bridge opens offline."""
    if name not in LAYOUTS:
        hint = " (use format: wds for clip-benchmark's webdataset layout)" if name.startswith("wds/") else ""
        raise UserError(f"clip-benchmark dataset '{name}' is not bridged{hint}; expected one of "
                        f"{', '.join(sorted(LAYOUTS))}")


def layout_paths(name: str, split: str) -> list[str]:
    """Return the paths (relative to the dataset_root) clip-benchmark's builder reads for name and split."""
    check_name(name)
    layout = LAYOUTS[name]
    if split not in layout and "*" not in layout:
        raise UserError(f"clip-benchmark dataset '{name}' has no split '{split}' here; expected one of "
                        f"{', '.join(sorted(layout))}")
    return [p.format(split=split) for p in layout.get(split, layout.get("*", ()))]


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


def _retrieval_items(ds, name: str) -> tuple[list[Path], list[list[str]]]:
    """Return (image files, captions per image) of a clip-benchmark retrieval dataset, in its order."""
    if name == "mscoco_captions":  # torchvision CocoCaptions over clip-benchmark's Karpathy COCO-format JSON
        files = [Path(ds.root) / ds.coco.loadImgs(i)[0]["file_name"] for i in ds.ids]
        return files, [list(ds._load_target(i)) for i in ds.ids]
    return [Path(ds.root) / image for image, _ in ds.data], [list(c) for _, c in ds.data]


def _call_builder(name: str, folder: Path, split: str, transform: Callable | None, task: str):
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
                                 task=task)
    except Exception as exc:  # the builder signals a bad layout with asserts, RuntimeError, OSError, ValueError
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"clip-benchmark could not open '{name}' from {folder} ({detail}); expected "
                        f"{', '.join(str(folder / p) for p in layout_paths(name, split)) or folder}") from None


def build_clip_benchmark(dataset: dict, root: Path, transform: Callable | None, split: str | None = None):
    """Return the dataset a `clip_benchmark` declaration names, read by clip-benchmark's builder from root/<root>.

    Classification datasets come back as ClipBenchmarkClassification, retrieval ones
    (mscoco_captions, flickr30k, flickr8k) as CaptionRetrieval with clip-benchmark's caption grouping.
    """
    name, split = dataset["dataset"], split or dataset.get("split", "test")
    folder = Path(root) / dataset["root"]
    missing = [p for p in [folder] + [folder / p for p in layout_paths(name, split)] if not p.exists()]
    if missing:
        raise UserError(f"clip-benchmark dataset '{name}' not found: expected {', '.join(map(str, missing))}")
    if name in RETRIEVAL_DATASETS:
        ds = _call_builder(name, folder, split, None, "zeroshot_retrieval")
        files, captions = _retrieval_items(ds, name)
        annotation_file = folder / layout_paths(name, split)[-1]
        return CaptionRetrieval(files, captions, annotation_file, str(folder), transform)
    ds = _call_builder(name, folder, split, transform, "zeroshot_classification")
    return ClipBenchmarkClassification(ds, name, folder, split)
