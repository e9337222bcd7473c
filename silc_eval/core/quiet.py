"""Silence the root logger for a block: open_clip logs benign warnings (e.g. 'no pretrained weights')."""

import logging
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def quiet_root_logger(level: int = logging.ERROR) -> Iterator[None]:
    """Raise the root logger's level inside the block and restore it afterwards."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(previous)
