"""UserError, the one exception type the CLI turns into a one-line message and exit code 2; WriteError, its
kind for a failed write; Stopped, a long job that stopped on request after saving where it was; and the unwrapping of a UserError raised in a DataLoader worker process."""

from __future__ import annotations

import errno
import re
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class UserError(Exception):
    """A mistake in the user's input: a bad name, path, file or configuration.

    The message must say what was wrong and what was expected, in one line.
    """


class WriteError(UserError, OSError):
    """A file or folder could not be written (a read-only folder, a full disk, a file where a folder belongs).

    A UserError, so the CLI prints one line naming the path and the operating system's reason; also an
    OSError, so code that tolerates a failed write (the feature cache) still catches it.
    """

    FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))

    def __init__(self, path: Path | str, reason: OSError):
        super().__init__(reason.errno, reason.strerror or str(reason), str(path))
        hint = " (disk full?)" if reason.errno in self.FULL else ""
        self.message = f"cannot write {path}: {reason.strerror or reason or type(reason).__name__}{hint}"

    def __str__(self) -> str:
        return self.message


class Stopped(Exception):
    """A long job (training) stopped on a signal after saving the state the same command resumes from; the CLI
    prints the message and exits with 128 + the signal's number, as a shell reports a process the signal ended."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + int(signal_number)


# torch.utils.data re-raises an exception of a DataLoader worker as the same type built from one string:
# "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last): ..."
_WORKER_WRAPPER = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\s*\nOriginal ")


def unwrap_worker_error(exc: BaseException) -> UserError | None:
    """Return the one-line UserError a DataLoader worker raised, recovered from the exception torch re-raises
    in the main process (whose message holds the worker's whole traceback); None for any other exception."""
    if not isinstance(exc, (UserError, RuntimeError)) or not exc.args:
        return None
    found = _WORKER_WRAPPER.match(str(exc.args[0]))
    if found is None or found.group(1) not in _user_error_names():
        return None  # (torch re-raises a UserError subclass it cannot rebuild from one string as a RuntimeError)
    text = str(exc.args[0])
    last_line = re.compile(rf"^(?:[\w.]+\.)?{re.escape(found.group(1))}: (.+)$")
    for line in reversed(text.splitlines()):
        match = last_line.match(line)
        if match:
            return UserError(match.group(1).strip())
    return None


def _user_error_names() -> set[str]:
    names, pending = set(), [UserError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names


@contextmanager
def worker_errors_unwrapped() -> Iterator[None]:
    """Within the block, a UserError raised in a DataLoader worker surfaces as its original one-line UserError."""
    try:
        yield
    except (UserError, RuntimeError) as exc:
        if unwrap_worker_error(exc) is None:
            raise
        # torch's re-raise keeps its exception in a local of a frame of its own traceback: a reference cycle
        # that would keep the loader's iterator (and its worker processes) alive until a garbage collection,
        # whose shutdown then stalls. Clearing those frames lets the iterator shut its workers down now.
        traceback.clear_frames(exc.__traceback__)
        raise unwrap_worker_error(exc) from None
