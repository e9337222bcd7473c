"""The task registry: one module per task, each defining TASK (the contract in core/contract.py)."""

from __future__ import annotations

from silc_eval.core.contract import Task
from silc_eval.tasks import (
                             association,
                             caption_selection,
                             linear_probe,
                             linear_segmentation,
                             openvocab_segmentation,
                             retrieval,
                             zeroshot_classification,
                             zeroshot_segmentation,
)

TASKS: dict[str, Task] = {module.TASK.name: module.TASK for module in (
    zeroshot_classification, retrieval, zeroshot_segmentation, openvocab_segmentation, linear_segmentation,
    linear_probe, caption_selection, association)}
