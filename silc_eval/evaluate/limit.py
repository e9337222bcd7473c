"""--limit N: a smoke run on the first N samples of every split (CLIP_benchmark's and lm-evaluation-harness's
--limit). Its records say so, and a resumed run keeps them only for the same limit, never as full results."""

from __future__ import annotations

import hashlib

from torch.utils.data import Dataset

PER_SAMPLE = ("targets", "captions", "instance_images", "metadata", "cues", "associated")  # per-sample lists the tasks read beside the items


class FirstSamples(Dataset):
    """The first n samples of a dataset: items, labels (label(i)) and per-sample lists cut to n; every other
    attribute (classes, templates, split, ...) is the dataset's own. Its fingerprint names the limit."""

    def __init__(self, dataset, n: int):
        self.dataset = dataset
        self.n = min(n, len(dataset))
        digest = hashlib.sha256(f"{getattr(dataset, 'fingerprint', '')}\0first\0{self.n}".encode())
        self.fingerprint = digest.hexdigest()[:16]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} is beyond the first {self.n} samples")
        return self.dataset[index % self.n]

    def label(self, index: int):
        """Return the label map of sample index (segmentation datasets), without decoding its image."""
        return self.dataset.label(index)

    def __getattr__(self, name: str):
        if name in ("dataset", "n"):  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        value = getattr(self.dataset, name)
        return value[:self.n] if name in PER_SAMPLE else value


def limit_splits(splits: dict[str, object], n: int | None) -> dict[str, object]:
    """Return splits with every split cut to its first n samples (unchanged when n is None)."""
    return splits if n is None else {name: FirstSamples(split, n) for name, split in splits.items()}
