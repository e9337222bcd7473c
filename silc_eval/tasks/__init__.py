"""Tasks: one module per task, each with DEFAULT_PARAMS, METRICS, DATASET_FORMATS and evaluate()."""

from __future__ import annotations

from types import ModuleType

from silc_eval.tasks import linear_probe
from silc_eval.tasks import (linear_segmentation, openvocab_segmentation, retrieval, zeroshot_classification,
                             zeroshot_segmentation)

TASKS: dict[str, ModuleType] = {
    "zeroshot_classification": zeroshot_classification,
    "retrieval": retrieval,
    "zeroshot_segmentation": zeroshot_segmentation,
    "openvocab_segmentation": openvocab_segmentation,
    "linear_segmentation": linear_segmentation,
    "linear_probe": linear_probe,
}
