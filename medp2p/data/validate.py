"""Dataset validation: every problem a training or inference run would trip over, one line each.

Checks, per file: it decodes completely (truncated files fail), no NaN/Inf voxels, the affine is
not sheared, NIfTI qform and sform agree, label keys hold only their declared values and are not
empty, DICOM series are complete and evenly spaced. Per case: the keys a task needs are present,
and all images of the case share one grid (shape, spacing, direction, origin within
:class:`GridTolerance`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medp2p.data.cases import Case, image_keys, label_values, load_datalist
from medp2p.io import DicomSeriesError, VolumeReadError, read_volume, shear
from medp2p.types import Volume

#: Largest shear (|cosine| between voxel axes) accepted as orthogonal.
SHEAR_TOL = 1e-4
#: Largest qform/sform difference (any matrix entry, mm) accepted as agreement.
XFORM_TOL_MM = 1e-3


@dataclass(frozen=True)
class GridTolerance:
    """How close two grids must be to count as the same grid.

    Args:
        spacing_mm: largest voxel size difference on any axis.
        origin_mm: largest distance between the two ``(0, 0, 0)`` voxel centres.
        direction: largest difference between direction cosines.
    """

    spacing_mm: float = 1e-3
    origin_mm: float = 1e-2
    direction: float = 1e-3


@dataclass(frozen=True)
class Problem:
    """One problem found: which file, which check, what was found and what to do.

    ``check`` is one of ``unreadable``, ``dicom``, ``non_finite``, ``sheared_affine``,
    ``qform_sform``, ``grid_mismatch``, ``label_values``, ``empty_mask``, ``missing_key``.
    """

    file: str
    check: str
    message: str
    case: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = f" [case {self.case!r}, key {self.key!r}]" if self.case is not None else ""
        return f"{self.file}: {self.message}{where}"


@dataclass
class ValidationReport:
    """What :func:`validate_data` checked and found; ``ok`` when nothing was found."""

    cases: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "cases": self.cases, "files": self.files, "problems": [asdict(p) for p in self.problems]}


def check_volume(volume: Volume, file: str, labels: tuple[int, ...] | None = None) -> list[Problem]:
    """Problems of one decoded volume: non-finite voxels, shear, qform/sform, label values, emptiness.

    Args:
        volume: the decoded volume.
        file: the name to report.
        labels: the values allowed for a label volume; None for an image.

    Example:
        >>> [str(p) for p in check_volume(read_volume("mask.nii.gz"), "mask.nii.gz", labels=(0, 1))]
        ['mask.nii.gz: empty mask: no voxel is non-zero']
    """
    problems = []
    arr = volume.array
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        problems.append(Problem(file, "non_finite", f"{bad} NaN/Inf voxel(s) of {arr.size}; fix or mask them before use"))
    s = shear(volume.affine)
    if s > SHEAR_TOL:
        problems.append(Problem(file, "sheared_affine", f"sheared affine (voxel axes {np.degrees(np.arccos(min(s, 1.0))):.2f} deg apart instead of 90); resample onto an orthogonal grid"))
    (qcode, qform), (scode, sform) = volume.meta.get("qform", (0, None)), volume.meta.get("sform", (0, None))
    if qcode > 0 and scode > 0 and qform is not None and sform is not None:
        diff = float(np.max(np.abs(qform - sform)))
        if diff > XFORM_TOL_MM:
            problems.append(Problem(file, "qform_sform", f"qform and sform disagree by up to {diff:.4f} (qform_code={qcode}, sform_code={scode}); readers differ on where this image is: set both to the right affine"))
    if labels is not None:
        finite = arr[np.isfinite(arr)]
        values = np.unique(finite)
        outside = [v for v in values.tolist() if v not in labels]
        if outside:
            shown = ", ".join(f"{v:g}" for v in outside[:8]) + (" ..." if len(outside) > 8 else "")
            problems.append(Problem(file, "label_values", f"label values {shown} outside the declared set {list(labels)}"))
        if not np.any(finite != 0):
            problems.append(Problem(file, "empty_mask", "empty mask: no voxel is non-zero"))
    return problems


def compare_grids(ref: Volume, other: Volume, tol: GridTolerance = GridTolerance()) -> str | None:
    """None when both volumes share one grid within ``tol``; else what differs, in words.

    Example:
        >>> compare_grids(mr, ct)
        'shape (256, 256, 176) != (256, 256, 180)'
    """
    if ref.shape != other.shape:
        return f"shape {other.shape} != {ref.shape}"
    ds = np.abs(np.subtract(other.spacing_mm, ref.spacing_mm))
    if ds.max() > tol.spacing_mm:
        return f"spacing {tuple(round(s, 5) for s in other.spacing_mm)} mm != {tuple(round(s, 5) for s in ref.spacing_mm)} mm"
    dd = np.abs(other.direction - ref.direction).max()
    if dd > tol.direction:
        return f"direction differs by up to {dd:.4f} (a flipped or rotated axis order?)"
    do = float(np.linalg.norm(other.origin_mm - ref.origin_mm))
    if do > tol.origin_mm:
        return f"origin {np.round(other.origin_mm, 3).tolist()} is {do:.3f} mm from {np.round(ref.origin_mm, 3).tolist()}"
    return None


def validate_case(
    case: Case,
    required_keys: Iterable[str] = (),
    datalist: dict[str, Any] | None = None,
    tol: GridTolerance = GridTolerance(),
) -> tuple[list[Problem], int]:
    """Check one case; returns its problems and how many files were read.

    Example:
        >>> problems, n = validate_case({"id": "c0", "mr": "c0/mr.nii.gz", "ct": "c0/ct.nii.gz"}, ["mr", "ct", "mask"])
        >>> problems[0].check
        'missing_key'
    """
    cid = str(case["id"])
    problems: list[Problem] = []
    keys = image_keys(case)
    where = next((Path(case[k]).parent for k in keys if isinstance(case[k], str)), Path(cid))
    for key in required_keys:
        if key not in case:
            problems.append(Problem(str(where), "missing_key", f"no '{key}' image for this case (has {keys})", cid, key))
    reference: tuple[str, str, Volume] | None = None
    files = 0
    for key in [k for k in required_keys if k in case] + [k for k in keys if k not in required_keys]:
        paths = case[key] if isinstance(case[key], list) else [case[key]]
        for path in paths:
            files += 1
            try:
                vol = read_volume(path)
            except DicomSeriesError as err:
                problems += [Problem(str(f), "dicom", msg, cid, key) for f, msg in err.problems]
                continue
            except VolumeReadError as err:
                problems.append(Problem(str(err.path), "unreadable", err.problem, cid, key))
                continue
            problems += [Problem(p.file, p.check, p.message, cid, key) for p in check_volume(vol, str(path), label_values(key, datalist))]
            if reference is None:
                reference = (key, str(path), vol)
                continue
            diff = compare_grids(reference[2], vol, tol)
            if diff is not None:
                problems.append(Problem(
                    str(path), "grid_mismatch",
                    f"'{key}' is not on the '{reference[0]}' grid of {reference[1]}: {diff}. "
                    f"Resample '{key}' onto the '{reference[0]}' grid first",
                    cid, key,
                ))
    return problems, files


def validate_data(
    data: str | Path,
    required_keys: Iterable[str] = (),
    sections: Iterable[str] | None = None,
    tol: GridTolerance = GridTolerance(),
    on_case: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Validate every case of every section (or of ``sections``) of the dataset at ``data``.

    Args:
        data: anything :func:`~medp2p.data.cases.load_datalist` reads.
        required_keys: keys each training/validation case must have (a task's inputs and targets).
        sections: the datalist sections to check; all of them by default.
        tol: grid agreement tolerance.
        on_case: called with each case id before it is checked (progress display).

    Raises:
        DataLayoutError: ``data`` is not a dataset layout (a usage error, not a data problem).

    Example:
        >>> report = validate_data("phantom/", required_keys=["mr", "ct", "mask"])
        >>> report.ok, report.cases
        (True, 4)
    """
    datalist = load_datalist(data)
    names = [s for s, v in datalist.items() if isinstance(v, list)] if sections is None else list(sections)
    report = ValidationReport()
    required = list(required_keys)
    for section in names:
        for case in datalist.get(section, []):
            if on_case is not None:
                on_case(str(case["id"]))
            # Test cases have no targets: only the keys they carry are required of them.
            need = [k for k in required if k in case] if section == "test" else required
            problems, files = validate_case(case, need, datalist, tol)
            report.cases += 1
            report.files += files
            report.problems += problems
    return report
