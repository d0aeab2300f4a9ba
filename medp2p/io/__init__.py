"""Volume I/O: the only place medp2p touches nibabel, SimpleITK, pydicom and highdicom.

Readers return a :class:`~medp2p.types.Volume` (float32 ``(X, Y, Z)`` array, RAS+ affine, source
metadata); writers take a Volume and keep the source's geometry. Writes are atomic.

Example:
    >>> from medp2p.io import read_volume, write_nifti
    >>> ct = read_volume("patient_01/CT/")            # a DICOM series folder, in HU
    >>> write_nifti(ct, "patient_01/ct.nii.gz")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medp2p.io.atomic import atomic_path, full_suffix
from medp2p.io.dicom import SeriesInfo, list_dicom_series, probe_dicom, read_dicom_header, read_dicom_series
from medp2p.io.errors import DicomSeriesError, VolumeReadError, VolumeWriteError
from medp2p.io.geometry import affine_from_itk, axis_codes, itk_from_affine, shear
from medp2p.io.itk import ITK_READ_SUFFIXES, ITK_WRITE_SUFFIXES, read_itk, write_itk
from medp2p.io.nifti import NIFTI_SUFFIXES, read_nifti, write_nifti
from medp2p.types import Volume

#: File suffixes :func:`read_volume` accepts (plus folders holding a DICOM series, and ``.dcm`` files).
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_READ_SUFFIXES


def is_volume_file(path: str | Path) -> bool:
    """True when ``path``'s suffix is a volume format medp2p reads (``.nii.gz``, ``.mha``, ...)."""
    return full_suffix(path) in VOLUME_SUFFIXES


def read_volume(path: str | Path, series_uid: str | None = None) -> Volume:
    """Read a volume from a ``.nii``/``.nii.gz``/``.mha``/``.mhd``/``.nrrd``/``.nhdr`` file or a DICOM series.

    Args:
        path: a volume file, a folder holding a DICOM series, or one ``.dcm`` file of a series
            (then its whole series in that folder is read).
        series_uid: for DICOM folders holding several series, which one to read.

    Returns:
        A float32 ``(X, Y, Z)`` :class:`Volume` with a RAS+ affine; every voxel is decoded, so a
        truncated file fails here and not later.

    Raises:
        VolumeReadError: missing, unreadable, truncated or unsupported input (names the file).

    Example:
        >>> mr = read_volume("case_000/mr.nii.gz")
        >>> mr.shape, mr.spacing_mm
        ((64, 64, 32), (1.0, 1.0, 2.0))
    """
    path = Path(path)
    if not path.exists():
        raise VolumeReadError(path, "no such file or folder")
    if path.is_dir():
        return read_dicom_series(path, series_uid)
    suffix = full_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suffix in ITK_READ_SUFFIXES:
        return read_itk(path)
    if suffix in (".dcm", ".ima", ".dicom", ""):
        ds, why = probe_dicom(path)
        if ds is not None:
            return read_dicom_series(path.parent, series_uid or str(ds.get("SeriesInstanceUID", "")))
        if why is not None:
            raise VolumeReadError(path, why)
    raise VolumeReadError(
        path,
        f"unknown volume format {suffix or '(no suffix)'!r}; medp2p reads {', '.join(VOLUME_SUFFIXES)} "
        "files and folders holding a DICOM series",
    )


def write_volume(volume: Volume, path: str | Path, dtype: np.dtype | type | str | None = None) -> Path:
    """Write ``volume`` atomically, choosing the format by suffix (``.nii``, ``.nii.gz``, ``.mha``, ``.nrrd``).

    Example:
        >>> write_volume(mask, "out/case_000/mask.nii.gz", dtype=np.uint8)
    """
    suffix = full_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return write_nifti(volume, path, dtype)
    if suffix in ITK_WRITE_SUFFIXES:
        return write_itk(volume, path, dtype)
    raise ValueError(f"{path}: cannot write {suffix!r}; choose one of {NIFTI_SUFFIXES + ITK_WRITE_SUFFIXES}")


__all__ = [
    "DicomSeriesError",
    "ITK_READ_SUFFIXES",
    "NIFTI_SUFFIXES",
    "SeriesInfo",
    "VOLUME_SUFFIXES",
    "Volume",
    "VolumeReadError",
    "VolumeWriteError",
    "affine_from_itk",
    "atomic_path",
    "axis_codes",
    "full_suffix",
    "is_volume_file",
    "itk_from_affine",
    "list_dicom_series",
    "probe_dicom",
    "read_dicom_header",
    "read_dicom_series",
    "read_itk",
    "read_nifti",
    "read_volume",
    "shear",
    "write_itk",
    "write_nifti",
    "write_volume",
]
