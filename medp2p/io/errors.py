"""Errors raised by :mod:`medp2p.io`; each names the file and the problem."""

from __future__ import annotations

import errno
from pathlib import Path

#: errno values that mean "no room to write": disk full, a file size limit (RLIMIT_FSIZE), a quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class VolumeReadError(ValueError):
    """A volume could not be read. ``str(err)`` names the file, the problem and, when known, the fix.

    Args:
        path: the file or folder that was being read.
        problem: what was found and, where possible, what to do about it.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DicomSeriesError(VolumeReadError):
    """A DICOM folder does not hold exactly one complete, evenly spaced series.

    Args:
        path: the folder.
        problems: one ``(file, message)`` per problem found (file may be the folder itself).
    """

    def __init__(self, path: str | Path, problems: list[tuple[Path, str]]) -> None:
        self.problems = problems
        folder = Path(path)
        super().__init__(path, "; ".join(m if p == folder else f"{p.name}: {m}" for p, m in problems))


class VolumeWriteError(OSError):
    """An output could not be written; nothing partial was left at the destination.

    ``str(err)`` names the path being written and the cause (a full disk says so).
    """


def disk_full_cause(exc: BaseException) -> OSError | None:
    """The "no space" OSError behind ``exc`` (itself, or what it was raised from or during), if any.

    Libraries wrap write failures in their own errors (torch's ``RuntimeError: ... file write
    failed``); the OSError they hit is still on the exception's chain.
    """
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.errno in DISK_FULL_ERRNOS:
            return node
        node = node.__cause__ or node.__context__
    return None


def disk_full_error(path: str | Path, cause: OSError) -> VolumeWriteError:
    """The one-line error for a write that ran out of room."""
    what = "a file size limit was reached" if cause.errno == errno.EFBIG else "the disk is full"
    return VolumeWriteError(
        cause.errno,
        f"{path}: {what} while writing it ({cause.strerror}); nothing was left there and earlier outputs are intact: "
        "free space and run again",
    )
