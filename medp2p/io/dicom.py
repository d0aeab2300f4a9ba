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


def probe_dicom(path: Path) -> tuple[Dataset | None, str | None]:
    """``(dataset without pixel data, None)`` for a DICOM image file, else ``(None, why not)``.

    ``why not`` is None for files that are plainly not DICOM (no ``DICM`` preamble, no ``.dcm``
    suffix, nothing decodable), and a short reason for files that look like DICOM but are not a
    readable image slice, so a folder of broken files can say what is wrong with them.
    """
    looks_dicom = path.suffix.lower() in (".dcm", ".ima", ".dicom")
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        looks_dicom = looks_dicom or head[128:132] == b"DICM"
    except OSError as err:
        return None, f"cannot be opened ({err.strerror or err})"
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        # Files without the 128-byte preamble (old ACR-NEMA style) are still DICOM if they
        # decode to an image header; anything else is not DICOM.
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception as err:
            return None, (f"not readable as DICOM ({type(err).__name__}: {err})" if looks_dicom else None)
        if "SOPClassUID" not in ds:
            why = "no DICOM File Meta header (no 'DICM' preamble), and no image attributes (SOPClassUID, Rows) without it"
            return None, (why if looks_dicom else None)
    except Exception as err:
        return None, (f"not readable as DICOM ({type(err).__name__}: {err})" if looks_dicom else None)
    if "Rows" not in ds or "Columns" not in ds:
        # DICOMDIR, structured reports, RT structures: not image slices
        kind = str(ds.get("Modality", "") or ds.get("SOPClassUID", "") or "no Rows/Columns")
        return None, f"not an image slice ({kind})"
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}) and head[128:132] == b"DICM":
        return None, "the File Meta header has no Transfer Syntax UID (0002,0010): the pixel data cannot be decoded"
    return ds, None


def read_dicom_header(path: Path) -> Dataset | None:
    """The dataset without pixel data, or None when ``path`` is not a DICOM image file."""
    return probe_dicom(path)[0]


def _scan(folder: Path) -> tuple[dict[str, list[tuple[Path, Dataset]]], list[Path], dict[Path, str]]:
    """Image slices by SeriesInstanceUID, the files skipped, and why the DICOM-looking ones were."""
    if not folder.is_dir():
        raise VolumeReadError(folder, "not a folder")
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped: list[Path] = []
    reasons: dict[Path, str] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds, why = probe_dicom(path)
        if ds is None:
            skipped.append(path)
            if why:
                reasons[path] = why
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    if skipped and series:
        names = ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        log.warning("%s: skipped %d file(s) that are not DICOM image slices: %s", folder, len(skipped), names)
    return series, skipped, reasons


def list_dicom_series(folder: str | Path) -> list[SeriesInfo]:
    """The image series in ``folder``, largest first.

    Example:
        >>> for s in list_dicom_series("patient_01/"):
        ...     print(s)
        1.2.826.0.1.3680043.2.1125.1 (MR 'T1 post', 24 files)
    """
    groups, _, _ = _scan(Path(folder))
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


def _int(path: Path, ds: Dataset, keyword: str, default: int | None = None) -> int:
    """An integer attribute; a malformed value (bad VR content) names the file and the element."""
    try:
        value = ds.get(keyword, default)
        if value is None or value == "":
            if default is None:
                raise VolumeReadError(path, f"missing {keyword}; not a complete image header")
            return default
        return int(value)
    except (ValueError, TypeError) as err:
        raise VolumeReadError(path, f"malformed {keyword} value ({err}): the file breaks the DICOM value rules (VR)") from None


#: Decoding plugins to install, by transfer syntax family (pydicom 3 pixel decoders).
_DECODER_PACKAGES = {
    "JPEG-LS": "pylibjpeg-libjpeg or pyjpegls",
    "JPEG 2000": "pylibjpeg-openjpeg",
    "JPEG": "pylibjpeg-libjpeg",
    "RLE": "pylibjpeg-rle",
}


def _check_decoder(path: Path, ds: Dataset) -> None:
    """Refuse pixel data no installed decoder can read, naming the syntax and what decodes it."""
    from pydicom.pixels.decoders.base import get_decoder

    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is None:
        raise VolumeReadError(path, "the File Meta header has no Transfer Syntax UID (0002,0010): the pixel data cannot be decoded")
    if not syntax.is_compressed:
        return
    name = f"{syntax.name} ({syntax})"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise VolumeReadError(
            path,
            f"transfer syntax {name}: pydicom has no decoder for it; "
            "convert the series to an uncompressed transfer syntax first (dcmdjpeg, gdcmconv)",
        ) from None
    if not decoder.is_available:
        package = next(
            (p for family, p in _DECODER_PACKAGES.items() if syntax.name.startswith(family) or family in syntax.name), "pylibjpeg"
        )
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise VolumeReadError(path, f"transfer syntax {name} needs a decoder that is not installed ({missing}): pip install {package}")


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
    try:
        iop0 = _floats(first, "ImageOrientationPatient", 6)
        ps0 = _floats(first, "PixelSpacing", 2)
    except (ValueError, TypeError) as err:
        raise DicomSeriesError(
            folder, [(first_path, f"malformed geometry value ({err}): the file breaks the DICOM value rules (VR)")]
        ) from None
    shape0 = (_int(first_path, first, "Rows"), _int(first_path, first, "Columns"))
    positions: list[np.ndarray] = []
    for path, ds in items:
        frames = _int(path, ds, "NumberOfFrames", 1) or 1
        if frames > 1:
            problems.append((path, f"multi-frame image ({frames} frames); medp2p reads single-frame series"))
            continue
        try:
            iop = _floats(ds, "ImageOrientationPatient", 6)
            ipp = _floats(ds, "ImagePositionPatient", 3)
            ps = _floats(ds, "PixelSpacing", 2)
        except (ValueError, TypeError) as err:
            problems.append((path, f"malformed geometry value ({err}): the file breaks the DICOM value rules (VR)"))
            continue
        missing = [k for k, v in (("ImageOrientationPatient", iop), ("ImagePositionPatient", ipp), ("PixelSpacing", ps)) if v is None]
        if missing or iop is None or ipp is None or ps is None:
            problems.append((path, f"missing {', '.join(missing)}; cannot place the slice in space"))
            continue
        if iop0 is None or np.max(np.abs(iop - iop0)) > ORIENTATION_ATOL:
            problems.append((path, f"ImageOrientationPatient {iop.tolist()} differs from {first_path.name}'s"))
        if ps0 is None or np.max(np.abs(ps - ps0)) > 1e-4:
            problems.append((path, f"PixelSpacing {ps.tolist()} differs from {first_path.name}'s"))
        shape = (_int(path, ds, "Rows"), _int(path, ds, "Columns"))
        if shape != shape0:
            problems.append((path, f"matrix {shape[0]}x{shape[1]} differs from {first_path.name}'s {shape0[0]}x{shape0[1]}"))
        if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) not in ("MONOCHROME1", "MONOCHROME2"):
            problems.append((path, f"PhotometricInterpretation {ds.PhotometricInterpretation}: not a greyscale image"))
        positions.append(ipp)
    if problems:
        raise DicomSeriesError(folder, problems)
    assert iop0 is not None and ps0 is not None  # every slice matched them above

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
            problems.append(
                (
                    files[k + 1],
                    f"gap of {steps[k]:.3f} mm after {files[k].name} where the series steps {step:.3f} mm: "
                    f"about {int(round(steps[k] / step)) - 1} slice(s) missing",
                )
            )
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


#: CT voxels flagged as padding (outside the reconstruction circle) become air.
PADDING_HU = -1024.0


def _padding(ds: Dataset, path: Path) -> tuple[int, int] | None:
    """The stored-value range ``[lo, hi]`` that PixelPaddingValue (and RangeLimit) declare, or None."""
    if "PixelPaddingValue" not in ds:
        return None
    value = _int(path, ds, "PixelPaddingValue")
    limit = _int(path, ds, "PixelPaddingRangeLimit", value)
    return (min(value, limit), max(value, limit))


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM image series from ``folder`` into a float32 :class:`Volume`.

    Args:
        folder: folder holding the series' files (searched recursively; non-DICOM files skipped).
        series_uid: which SeriesInstanceUID to read when the folder holds several.

    Returns:
        The volume with values ``stored * RescaleSlope + RescaleIntercept`` per slice (HU for CT),
        its RAS+ affine, and ``meta["dicom_datasets"]`` (headers in slice order). Voxels whose
        stored value the slice declares as padding (``PixelPaddingValue``, up to
        ``PixelPaddingRangeLimit``: a CT's outside-the-reconstruction-circle fill) become air,
        :data:`PADDING_HU`, on CT, and the series' lowest other value on other modalities;
        ``meta["padding_voxels"]`` counts them.

    Raises:
        DicomSeriesError: several series and no ``series_uid``, or a broken series (missing,
            duplicate or unevenly spaced slices, mixed orientations); the message lists each.
        VolumeReadError: no image slice in the folder (with why its DICOM-looking files were
            skipped), malformed values, or pixel data that cannot be decoded (a compressed transfer
            syntax without its decoder names the syntax and the package to install).

    Example:
        >>> ct = read_dicom_series("patient_01/CT/")
        >>> float(ct.array.min())      # HU
        -1024.0
    """
    folder = Path(folder)
    groups, skipped, reasons = _scan(folder)
    if not groups:
        if reasons:
            shown = "; ".join(f"{p.name}: {why}" for p, why in list(reasons.items())[:3])
            more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
            raise VolumeReadError(folder, f"no readable DICOM image slice: {shown}{more}")
        raise VolumeReadError(folder, f"no DICOM image files found ({len(skipped)} other file(s) skipped)")
    if series_uid is None and len(groups) > 1:
        listing = "; ".join(str(s) for s in list_dicom_series(folder))
        raise DicomSeriesError(
            folder, [(folder, f"holds {len(groups)} DICOM series, pick one with --series-uid UID (Python: series_uid=): {listing}")]
        )
    uid = next(iter(groups)) if series_uid is None else series_uid
    if uid not in groups:
        raise DicomSeriesError(folder, [(folder, f"no series {uid!r} here; found: {', '.join(map(str, list_dicom_series(folder)))}")])
    stack = _check_and_sort(folder, groups[uid])

    rows, cols = int(stack.datasets[0].Rows), int(stack.datasets[0].Columns)
    array = np.empty((cols, rows, len(stack.files)), dtype=np.float32)
    padded = np.zeros(array.shape, bool) if any("PixelPaddingValue" in d for d in stack.datasets) else None
    for k, path in enumerate(stack.files):
        try:
            ds = pydicom.dcmread(path)
        except Exception as err:
            raise VolumeReadError(path, f"not readable as DICOM ({type(err).__name__}: {err})") from err
        _check_decoder(path, ds)
        try:
            pixels = ds.pixel_array
        except Exception as err:
            raise VolumeReadError(path, f"pixel data could not be decoded ({type(err).__name__}: {err})") from err
        if pixels.shape != (rows, cols):
            raise VolumeReadError(path, f"pixel data has shape {pixels.shape}, the header says {rows}x{cols}")
        try:
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        except (ValueError, TypeError) as err:
            raise VolumeReadError(path, f"malformed RescaleSlope/RescaleIntercept ({err})") from None
        array[:, :, k] = (pixels.astype(np.float64) * slope + intercept).T
        pad = _padding(ds, path)
        if pad is not None and padded is not None:
            padded[:, :, k] = ((pixels >= pad[0]) & (pixels <= pad[1])).T
    n_padded = 0
    if padded is not None and padded.any():
        n_padded = int(padded.sum())
        modality = str(stack.datasets[0].get("Modality", "")).upper()
        rest = array[~padded]
        fill = PADDING_HU if modality == "CT" else (float(rest.min()) if rest.size else 0.0)
        array[padded] = fill
    meta = {
        "path": str(folder),
        "format": "dicom",
        "series_uid": uid,
        "modality": str(stack.datasets[0].get("Modality", "")),
        "dicom_datasets": stack.datasets,
        "dicom_files": stack.files,
        "skipped_files": skipped,
        "padding_voxels": n_padded,
    }
    return Volume(array, affine_from_itk(stack.origin_lps, stack.spacing_mm, stack.direction_lps), meta)
