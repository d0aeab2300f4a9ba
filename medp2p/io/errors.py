"""Errors raised by :mod:`medp2p.io`; each names the file and the problem."""

from __future__ import annotations

from pathlib import Path


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
    """A volume could not be written; nothing was left at the destination."""
