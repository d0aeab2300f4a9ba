"""Reading a DICOM image series from a folder with pydicom.

The folder is scanned (recursively) for DICOM files; files that are not DICOM, or DICOM without
image data, are skipped and logged. Slices are grouped by SeriesInstanceUID, sorted by their
position along the slice normal, checked (same orientation and matrix, no duplicate positions,
no gaps, even spacing, no gantry tilt) and rescaled per slice to float (CT comes out in HU).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medp2p.io.errors import DicomSeriesError, VolumeReadError
from medp2p.io.geometry import affine_from_itk
from medp2p.types import Volume

log = logging.getLogger(__name__)

#: Relative tolerance on slice steps: a step differing from the median by more is "uneven".
SPACING_RTOL = 0.01
#: A step longer than this many median steps means slices are missing.
GAP_FACTOR = 1.5
#: Largest tolerated difference between two slices' direction cosines.
ORIENTATION_ATOL = 1e-4


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder (see :func:`list_dicom_series`)."""

    uid: str
    modality: str
    description: str
    files: tuple[Path, ...]

    def __str__(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid or '<no SeriesInstanceUID>'} ({self.modality or '?'}{desc}, {len(self.files)} files)"


def read_dicom_header(path: Path) -> Dataset | None:
    """The dataset without pixel data, or None when ``path`` is not a DICOM image file."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        # Files without the 128-byte preamble (old ACR-NEMA style) are still DICOM if they
        # decode to an image header; anything else is not DICOM.
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            return None
        if "SOPClassUID" not in ds or "Rows" not in ds:
            return None
    except Exception:
        return None
    if "Rows" not in ds or "Columns" not in ds:
        return None  # DICOMDIR, structured reports, RT structures: not image slices
    return ds


def _scan(folder: Path) -> tuple[dict[str, list[tuple[Path, Dataset]]], list[Path]]:
    if not folder.is_dir():
        raise VolumeReadError(folder, "not a folder")
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped: list[Path] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = read_dicom_header(path)
        if ds is None:
            skipped.append(path)
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    if skipped:
        names = ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        log.warning("%s: skipped %d file(s) that are not DICOM image slices: %s", folder, len(skipped), names)
    return series, skipped


def list_dicom_series(folder: str | Path) -> list[SeriesInfo]:
    """The image series in ``folder``, largest first.

    Example:
        >>> for s in list_dicom_series("patient_01/"):
        ...     print(s)
        1.2.826.0.1.3680043.2.1125.1 (MR 'T1 post', 24 files)
    """
    groups, _ = _scan(Path(folder))
    infos = [
        SeriesInfo(
            uid=uid,
            modality=str(items[0][1].get("Modality", "")),
            description=str(items[0][1].get("SeriesDescription", "")),
            files=tuple(p for p, _ in items),
        )
        for uid, items in groups.items()
    ]
    return sorted(infos, key=lambda s: -len(s.files))


def _floats(ds: Dataset, keyword: str, n: int) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None:
        return None
    values = [value] if isinstance(value, (str, int, float)) else list(value)
    arr = np.asarray([float(v) for v in values])
    return arr if arr.size == n else None


@dataclass(frozen=True)
class _Stack:
    """A checked, sorted series: what the volume is built from."""

    files: list[Path]
    datasets: list[Dataset]
    origin_lps: np.ndarray
    spacing_mm: np.ndarray
    direction_lps: np.ndarray


def _check_and_sort(folder: Path, items: list[tuple[Path, Dataset]]) -> _Stack:
    problems: list[tuple[Path, str]] = []
    first_path, first = items[0]
    iop0 = _floats(first, "ImageOrientationPatient", 6)
    ps0 = _floats(first, "PixelSpacing", 2)
    shape0 = (int(first.Rows), int(first.Columns))
    positions: list[np.ndarray] = []
    for path, ds in items:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            problems.append((path, f"multi-frame image ({frames} frames); medp2p reads single-frame series"))
            continue
        iop = _floats(ds, "ImageOrientationPatient", 6)
        ipp = _floats(ds, "ImagePositionPatient", 3)
        ps = _floats(ds, "PixelSpacing", 2)
        missing = [k for k, v in (("ImageOrientationPatient", iop), ("ImagePositionPatient", ipp), ("PixelSpacing", ps)) if v is None]
        if missing:
            problems.append((path, f"missing {', '.join(missing)}; cannot place the slice in space"))
            continue
        if iop0 is None or np.max(np.abs(iop - iop0)) > ORIENTATION_ATOL:
            problems.append((path, f"ImageOrientationPatient {iop.tolist()} differs from {first_path.name}'s"))
        if ps0 is None or np.max(np.abs(ps - ps0)) > 1e-4:
            problems.append((path, f"PixelSpacing {ps.tolist()} differs from {first_path.name}'s"))
        if (int(ds.Rows), int(ds.Columns)) != shape0:
            problems.append((path, f"matrix {int(ds.Rows)}x{int(ds.Columns)} differs from {first_path.name}'s {shape0[0]}x{shape0[1]}"))
        if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) not in ("MONOCHROME1", "MONOCHROME2"):
            problems.append((path, f"PhotometricInterpretation {ds.PhotometricInterpretation}: not a greyscale image"))
        positions.append(ipp)
    if problems:
        raise DicomSeriesError(folder, problems)

    row, col = iop0[:3], iop0[3:]
    normal = np.cross(row, col)
    ipps = np.stack(positions)
    along = ipps @ normal
    order = np.argsort(along, kind="stable")
    files = [items[i][0] for i in order]
    datasets = [items[i][1] for i in order]
    along, ipps = along[order], ipps[order]

    steps = np.diff(along)
    for k in np.flatnonzero(steps < 1e-3):
        problems.append((files[k + 1], f"duplicate slice: same position {along[k]:.3f} mm along the normal as {files[k].name}"))
    if problems:
        raise DicomSeriesError(folder, problems)
    if len(files) > 1:
        # Nominal step: the median of the steps near the smallest one. Missing slices only make
        # steps longer, so a plain median would be fooled by short series (3 slices, 1 gap).
        step = float(np.median(steps[steps < GAP_FACTOR * steps.min()]))
        for k in np.flatnonzero(steps > GAP_FACTOR * step):
            problems.append((
                files[k + 1],
                f"gap of {steps[k]:.3f} mm after {files[k].name} where the series steps {step:.3f} mm: "
                f"about {int(round(steps[k] / step)) - 1} slice(s) missing",
            ))
        uneven = np.abs(steps - step) > SPACING_RTOL * step
        if np.any(uneven) and not problems:
            problems.append((folder, f"uneven slice spacing: steps from {steps.min():.4f} to {steps.max():.4f} mm"))
        in_plane = (ipps - ipps[0]) - np.outer(along - along[0], normal)
        tilt = float(np.max(np.linalg.norm(in_plane, axis=1)))
        if tilt > max(0.01, 0.01 * float(ps0.min())) * len(files):
            problems.append((folder, f"slice positions drift {tilt:.3f} mm in-plane (gantry tilt?); resample the series first"))
        if problems:
            raise DicomSeriesError(folder, problems)
    else:
        step = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)

    spacing = np.array([ps0[1], ps0[0], step])  # x follows the row direction: column spacing
    direction = np.stack([row, col, normal], axis=1)
    return _Stack(files, datasets, ipps[0], spacing, direction)


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM image series from ``folder`` into a float32 :class:`Volume`.

    Args:
        folder: folder holding the series' files (searched recursively; non-DICOM files skipped).
        series_uid: which SeriesInstanceUID to read when the folder holds several.

    Returns:
        The volume with values ``stored * RescaleSlope + RescaleIntercept`` per slice (HU for CT),
        its RAS+ affine, and ``meta["dicom_datasets"]`` (headers in slice order).

    Raises:
        DicomSeriesError: several series and no ``series_uid``, or a broken series (missing,
            duplicate or unevenly spaced slices, mixed orientations); the message lists each.

    Example:
        >>> ct = read_dicom_series("patient_01/CT/")
        >>> float(ct.array.min())      # HU
        -1024.0
    """
    folder = Path(folder)
    groups, skipped = _scan(folder)
    if not groups:
        raise VolumeReadError(folder, f"no DICOM image files found ({len(skipped)} other file(s) skipped)")
    if series_uid is None and len(groups) > 1:
        listing = "; ".join(str(s) for s in list_dicom_series(folder))
        raise DicomSeriesError(
            folder, [(folder, f"holds {len(groups)} DICOM series, pick one with series_uid= (CLI: --series-uid): {listing}")]
        )
    uid = next(iter(groups)) if series_uid is None else series_uid
    if uid not in groups:
        raise DicomSeriesError(folder, [(folder, f"no series {uid!r} here; found: {', '.join(map(str, list_dicom_series(folder)))}")])
    stack = _check_and_sort(folder, groups[uid])

    rows, cols = int(stack.datasets[0].Rows), int(stack.datasets[0].Columns)
    array = np.empty((cols, rows, len(stack.files)), dtype=np.float32)
    for k, path in enumerate(stack.files):
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as err:
            raise VolumeReadError(path, f"pixel data could not be decoded ({type(err).__name__}: {err})") from err
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        array[:, :, k] = (pixels.astype(np.float64) * slope + intercept).T
    meta = {
        "path": str(folder),
        "format": "dicom",
        "series_uid": uid,
        "dicom_datasets": stack.datasets,
        "dicom_files": stack.files,
        "skipped_files": skipped,
    }
    return Volume(array, affine_from_itk(stack.origin_lps, stack.spacing_mm, stack.direction_lps), meta)
