"""The one way silc-eval writes progress lines and warnings: stderr, rank 0 only under torchrun."""

from __future__ import annotations

import sys

from silc_eval.core import distributed


def log(message: str) -> None:
    """Print a progress line to stderr (on rank 0 only under torchrun); returns nothing."""
    if distributed.is_main():
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Print 'silc-eval: warning: MESSAGE' to stderr (on rank 0 only under torchrun); returns nothing."""
    log(f"silc-eval: warning: {message}")


def note(message: str) -> None:
    """Print 'silc-eval: MESSAGE' to stderr (on rank 0 only under torchrun); returns nothing."""
    log(f"silc-eval: {message}")
