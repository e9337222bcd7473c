"""Resumable training state, written atomically so a kill never leaves a corrupt checkpoint.

The state is loaded with `torch.load(weights_only=True)`: tensors, numbers, strings and
containers only, never pickled code. A file that does not load that way (not written by
this trainer, or tampered with) is a one-line error that says to discard it with --restart.

A periodic checkpoint is first written as `next.pt` and becomes `last.pt` only once the
following step has shown that its weights give a finite loss and finite gradients: the
checkpoint a diverged run keeps is one it can resume from.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from silc_eval.core.errors import UserError, WriteError

STATE_FILE = "last.pt"
PENDING_FILE = "next.pt"
STATE_KEYS = ("recipe_hash", "student", "optimizer", "objective", "run")
# Recipe values that may change between a run and its resumption: they change nothing that was already
# trained (log_every) or only the learning rate from here on (lr, warmup_steps), so that a diverged run
# resumes from its last good checkpoint with a lower learning rate, without --restart.
RESUMABLE_OPTIM_CHANGES = ("log_every", "lr", "warmup_steps")


def _hash(relevant: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recipe_hash(recipe: dict[str, Any]) -> str:
    """Return a short hash of everything in a recipe that a resumed run must share with the saved one
    (all but the description, the file and RESUMABLE_OPTIM_CHANGES)."""
    relevant = {k: v for k, v in recipe.items() if k not in ("file", "description")}
    relevant["optim"] = {k: v for k, v in relevant["optim"].items() if k not in RESUMABLE_OPTIM_CHANGES}
    return _hash(relevant)


NOT_SHAPING = ("file", "description", "name", "eval_suite")  # recipe keys that leave the trained weights as they are
NOT_SHAPING_OPTIM = ("log_every", "eval_every", "checkpoint_every")


def trained_weights_hash(recipe: dict[str, Any]) -> str:
    """Return a short hash of everything in a recipe that shapes the trained weights (not its name, description,
    evaluation or logging): two recipes with the same hash train the same model."""
    relevant = {k: v for k, v in recipe.items() if k not in NOT_SHAPING}
    relevant["optim"] = {k: v for k, v in relevant["optim"].items() if k not in NOT_SHAPING_OPTIM}
    return _hash(relevant)


def legacy_recipe_hash(recipe: dict[str, Any]) -> str:
    """Return the hash that states written before the learning rate could change on resume carry."""
    relevant = {k: v for k, v in recipe.items() if k not in ("file", "description")}
    relevant["optim"] = {k: v for k, v in relevant["optim"].items() if k != "log_every"}
    return _hash(relevant)


def write_error(path: Path, exc: BaseException) -> UserError:
    """Return the one-line UserError for a failed write of path: core's WriteError for an OSError, the same
    form for torch's writer, which reports a full disk as a RuntimeError ('[enforce fail at inline_container.cc')."""
    if isinstance(exc, OSError):
        return WriteError(path, exc)
    text = " ".join(str(exc).split())
    reason = text.split("] . ", 1)[-1][:160] or type(exc).__name__
    return UserError(f"cannot write {path}: {reason} (disk full?)")


def save_state(folder: Path, state: dict[str, Any], name: str = STATE_FILE) -> Path:
    """Write state to folder/name (last.pt, or next.pt for a checkpoint yet to be proven) through a temporary file
    and a rename; returns the path.

    A failed write (a full disk, a lost mount) removes the temporary file and is a UserError naming the path;
    the previous file is left as it was.
    """
    path = folder / name
    tmp = folder / f".{name}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise write_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def promote_pending(folder: Path) -> None:
    """Make the proven next.pt the last good checkpoint, last.pt (a rename); returns nothing."""
    try:
        os.replace(folder / PENDING_FILE, folder / STATE_FILE)
    except OSError as exc:
        raise UserError(f"cannot rename {folder / PENDING_FILE} to {STATE_FILE}: {exc.strerror or exc}") from None


def discard_pending(folder: Path) -> None:
    """Remove an unproven next.pt, if any (best effort); returns nothing."""
    try:
        (folder / PENDING_FILE).unlink(missing_ok=True)
    except OSError:
        pass


def load_state(folder: Path) -> dict[str, Any] | None:
    """Return the saved state in folder, or None when there is none.

    Loaded with weights_only=True; a file that cannot be loaded so, or that is not a training state, is a
    UserError naming it and saying that --restart discards it.
    """
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    discard = "rerun with --restart to discard it and train from the start"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        # Never quote torch's message: it advises weights_only=False, which would run the file's code.
        raise UserError(f"{path} is not a training state that loads safely ({type(exc).__name__}: it holds "
                        f"more than tensors and plain values, or is truncated); {discard}") from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise UserError(f"{path} is not a silc-eval training state (expected keys {', '.join(STATE_KEYS)}); "
                        f"{discard}")
    return state


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor | None]]) -> str | None:
    """Return the name of the first floating-point tensor holding a NaN or an infinity, or None when all are
    finite (tensors that are None or not floating point are skipped). One device sync in the common case."""
    tensors = [(name, t) for name, t in named if t is not None and torch.is_floating_point(t)]
    if not tensors:
        return None
    flags = torch.stack([torch.isfinite(t).all() for _, t in tensors])
    if bool(flags.all()):
        return None
    return tensors[int((~flags).nonzero()[0])][0]
