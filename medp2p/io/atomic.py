"""Atomic file writes: a temporary file in the destination folder, then a rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medp2p.io.errors import disk_full_cause, disk_full_error

#: Suffixes that must stay at the end of a temporary file's name so writers pick the right format.
_MULTI_SUFFIXES = (".nii.gz", ".tar.gz")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(kind: str = "file") -> int:
    """Permissions a new file (or ``kind="dir"`` folder) gets under the process umask.

    ``tempfile`` creates private (0600/0700) entries; outputs are renamed from those, so they are
    given the permissions an ordinary ``open()``/``mkdir()`` would have given them.
    """
    return (0o777 if kind == "dir" else 0o666) & ~_current_umask()


def full_suffix(path: str | Path) -> str:
    """The file type suffix, understanding double suffixes like ``.nii.gz``.

    Example:
        >>> full_suffix("ct.nii.gz"), full_suffix("ct.mha")
        ('.nii.gz', '.mha')
    """
    name = Path(path).name.lower()
    for s in _MULTI_SUFFIXES:
        if name.endswith(s):
            return s
    return Path(path).suffix.lower()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file keeps ``path``'s suffix (writers choose the format by it) and lives in the
    same folder, so the final ``os.replace`` is atomic: readers see the old file or the complete
    new one, never a partial one. On any exception the temporary file is removed and an existing
    file at ``path`` is left untouched; a write that runs out of room (a full disk, a file size
    limit, a quota) becomes :class:`~medp2p.io.errors.VolumeWriteError` naming ``path``.

    Example:
        >>> with atomic_path("out/sct.nii.gz") as tmp:
        ...     nib.save(img, tmp)
    """
    path = Path(path)
    suffix = full_suffix(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    except OSError as exc:
        full = disk_full_cause(exc)
        if full is not None:
            raise disk_full_error(path, full) from None
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else default_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        full = disk_full_cause(exc)
        if full is not None and not str(exc).startswith(f"{path}:"):
            raise disk_full_error(path, full) from None
        raise


def remove_outputs(folder: str | Path, names: tuple[str, ...]) -> None:
    """Remove the files and folders called ``names`` in ``folder`` (what a tool wrote there), and nothing else.

    Example:
        >>> remove_outputs("runs/mri2ct", ("last.pt", "best.pt", "previews"))
    """
    for name in names:
        target = Path(folder) / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def replace_folder(staged: str | Path, dest: str | Path) -> Path:
    """Move the finished folder ``staged`` onto ``dest`` (same parent), replacing what is there.

    The old ``dest`` is moved aside first and deleted only once the new one is in place, so
    ``dest`` is never half old, half new.

    Example:
        >>> replace_folder("out/.sct_dicom.tmp", "out/sct_dicom")
    """
    staged, dest = Path(staged), Path(dest)
    trash = None
    if dest.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        dest.rename(trash / dest.name)
    staged.rename(dest)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return dest
