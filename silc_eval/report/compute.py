"""Training compute of the evaluated models, read from their model cards.

A zoo model's card is model_zoo/<name>/card.yaml; a `local-dir:FOLDER` model may carry
FOLDER/card.yaml. A card is used only when its weights sha256 is the one the record was
evaluated with, so a retrained checkpoint never borrows an older card's compute.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from silc_eval.core.errors import UserError
from silc_eval.core.paths import zoo_dir
from silc_eval.models import zoo
from silc_eval.models.loading import local_dir_folder
from silc_eval.models.zoo import CARD_FILE

COMPUTE_COLUMNS = ["images_seen", "training_flops"]


def card_path(source: str) -> Path | None:
    """Return where the card of a model spec would be (a zoo name or local-dir:FOLDER), else None."""
    folder = local_dir_folder(source)
    if folder is not None:
        return folder / CARD_FILE
    if source and ":" not in source and "/" not in source:
        return zoo_dir() / source / CARD_FILE
    return None


def read_card_softly(path: Path) -> tuple[dict | None, str | None]:
    """Return (card, None), (None, None) when there is no card, or (None, why it could not be used)."""
    if not path.is_file():
        return None, None
    try:
        return zoo.read_card(path), None
    except UserError as exc:
        return None, f"model card {exc}"


def number(value: Any) -> float:
    """Return value as a float, or NaN when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def model_compute(record: dict[str, Any], warn: Callable[[str], None], card: Path | None = None) -> dict[str, float]:
    """Return {images_seen, training_flops} of the record's model from its card (NaN where unknown): the card file
    given when it exists (e.g. a published study's copy), else the card beside the record's model source."""
    empty = {column: math.nan for column in COMPUTE_COLUMNS}
    path = card if card is not None and card.is_file() else card_path(record["model"]["source"])
    if path is None:
        return empty
    card, problem = read_card_softly(path)
    if problem:
        warn(f"{problem}; compute columns of {record['model']['name']} left empty")
    if card is None:
        return empty
    card_sha = (card.get("weights") or {}).get("sha256")
    if card_sha and card_sha != record["model"]["sha256"]:
        warn(f"model card {path} describes other weights (sha256 {card_sha[:12]}, evaluated "
             f"{record['model']['sha256'][:12]}); compute columns of {record['model']['name']} left empty")
        return empty
    compute = card.get("compute") or {}
    return {column: number(compute.get(column)) for column in COMPUTE_COLUMNS}


def compute_by_model(records: Sequence[dict[str, Any]], warn: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Return {model name: {images_seen, training_flops}} for every model of the records (one card read each)."""
    result: dict[str, dict[str, float]] = {}
    for record in records:
        name = record["model"]["name"]
        if name not in result:
            result[name] = model_compute(record, warn)
    return result
