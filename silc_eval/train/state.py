"""Resumable training state, written atomically so a kill never leaves a corrupt checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "last.pt"


def recipe_hash(recipe: dict[str, Any]) -> str:
    """Return a short hash of everything in a recipe that changes the trajectory."""
    relevant = {k: v for k, v in recipe.items() if k not in ("file", "description")}
    relevant["optim"] = {k: v for k, v in relevant["optim"].items() if k != "log_every"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_state(folder: Path, state: dict[str, Any]) -> Path:
    """Write state to folder/last.pt through a temporary file and a rename; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    tmp = folder / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_state(folder: Path) -> dict[str, Any] | None:
    """Return the saved state in folder, or None when there is none."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
