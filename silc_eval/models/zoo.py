"""The model zoo: folders under model_zoo/ holding an open_clip local-dir checkpoint and a card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silc_eval.core.paths import zoo_dir
from silc_eval.core.schema import load_yaml_mapping

CARD_FILE = "card.yaml"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: its name, folder and parsed card."""

    name: str
    folder: Path
    card: dict[str, Any]


def list_zoo() -> list[ZooEntry]:
    """Return every zoo model (folders with a card.yaml), sorted by name."""
    root = zoo_dir()
    if not root.is_dir():
        return []
    entries = []
    for card_path in sorted(root.glob(f"*/{CARD_FILE}")):
        entries.append(ZooEntry(card_path.parent.name, card_path.parent, read_card(card_path)))
    return entries


def read_card(path: Path) -> dict[str, Any]:
    """Return a model card parsed from YAML; an unreadable or malformed card is a UserError naming it."""
    return load_yaml_mapping(Path(path))


def get_zoo_entry(name: str) -> ZooEntry | None:
    """Return the zoo model called name, or None."""
    for entry in list_zoo():
        if entry.name == name:
            return entry
    return None


def reference_scores(entry: ZooEntry) -> dict[str, dict[str, float]]:
    """Return the card's reference scores as {benchmark: {metric: value}}."""
    return dict(entry.card.get("reference_scores") or {})
