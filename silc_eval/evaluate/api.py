"""The public evaluate function: one benchmark, one model, the splits its task declared.

`silc-eval run` and the trainer (its in-loop evaluation and a trained model's reference scores)
evaluate through the same three calls: dataset_root -> build_splits -> evaluate_benchmark.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from silc_eval.core.contract import Outcome
from silc_eval.core.errors import UserError
from silc_eval.data.formats import build_split, declared_paths, missing_paths, split_paths
from silc_eval.registry import Benchmark


@dataclass
class Evaluation:
    """One model on one benchmark: the task's Outcome, the validated protocol, the data's identity, the time."""

    outcome: Outcome
    protocol: dict
    fingerprint: str
    sizes: dict[str, int]
    wall_time_s: float

    @property
    def split_info(self) -> dict[str, dict]:
        """Return {split: {size}} for the record."""
        return {split: {"size": size} for split, size in self.sizes.items()}


def dataset_root(dataset: dict, data_root: Path | None, synthscenes_root: Path | None,
                 synthscenes_seed: int | None = None) -> Path:
    """Return the folder a declaration's relative paths are resolved against (every split it declares),
    generating the SynthScenes parts it needs first (from synthscenes_seed: another world of the same classes and
    vocabulary, other scenes; None is the default world, seed 0)."""
    if dataset["source"] == "synthscenes":
        from silc_eval.producers.synthscenes import SynthScenesConfig, ensure_synthscenes

        config = SynthScenesConfig() if synthscenes_seed is None else SynthScenesConfig(seed=synthscenes_seed)
        return ensure_synthscenes(synthscenes_root, parts=synthscenes_parts(dataset), config=config)
    if data_root is None:
        raise UserError(f"dataset {dataset['name']} reads real data: pass --data-root DIR with "
                        f"{', '.join(split_paths(dataset))} under it")
    missing = missing_paths(dataset, data_root)
    if missing:
        raise UserError(f"dataset {dataset['name']} not found under {data_root}: expected "
                        f"{', '.join(map(str, missing))}")
    return Path(data_root)


def synthscenes_parts(dataset: dict) -> list[str]:
    """Return the SynthScenes parts (synthscenes/<part>/...) a declaration reads, over every split it has."""
    return sorted({Path(p).parts[1] for p in declared_paths(dataset)})


def build_splits(benchmark: Benchmark, root: Path, transform: Callable | None) -> dict[str, object]:
    """Return {split: torch Dataset} of every split the benchmark's task declares, read under root."""
    return {split: build_split(benchmark.dataset, root, transform, split) for split in benchmark.task_spec.splits}


def text_identity(split) -> str:
    """Return the class names and prompt templates a split carries, as canonical JSON ('' when it has none).

    They are part of a record's dataset identity wherever they come from: a file under the data root is
    hashed with the data, but clip-benchmark's packaged lists change with the package (CLIP_benchmark #109)."""
    texts = {key: getattr(split, key) for key in ("classes", "templates") if getattr(split, key, None) is not None}
    return json.dumps(texts, sort_keys=True, ensure_ascii=False, default=list) if texts else ""


def splits_fingerprint(splits: dict[str, object]) -> str:
    """Return the dataset fingerprint of a record: a hash over every split's files (its own fingerprint) and the
    class names and templates it carries (text_identity)."""
    joined = "".join(f"{name}:{splits[name].fingerprint}\0{text_identity(splits[name])}\n" for name in sorted(splits))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def evaluate_benchmark(model, benchmark: Benchmark, splits: dict[str, object], progress: bool = False) -> Evaluation:
    """Return the Evaluation of model on benchmark over the built splits (the task does the work).

    The task's main metric must be among the metrics it produced with this protocol.
    """
    protocol = benchmark.protocol()
    started = time.perf_counter()
    outcome = benchmark.task_spec.evaluate(model, splits, protocol, progress=progress)
    if benchmark.main_metric not in outcome.metrics:
        raise UserError(f"{benchmark.file}: main_metric '{benchmark.main_metric}' is not produced by task "
                        f"{benchmark.task} with these parameters; it produces {', '.join(outcome.metrics)}")
    return Evaluation(outcome, protocol, splits_fingerprint(splits), {s: len(d) for s, d in splits.items()},
                      time.perf_counter() - started)
