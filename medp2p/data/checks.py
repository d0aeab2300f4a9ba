"""The checks every command applies to every volume it reads, one problem per line.

Per volume: no NaN/Inf voxels, an affine that is not sheared, NIfTI qform and sform that agree
(or a choice of one, :class:`ReadOptions`), label maps holding only their declared values and
masks that are not empty. Per case: all images on one grid (:func:`compare_grids`).
``medp2p validate`` reports every problem; ``train``, ``predict`` and ``evaluate`` refuse a case
with any (through :func:`medp2p.data.case_reader.read_case`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medp2p.io import shear
from medp2p.types import Volume

#: Largest shear (|cosine| between voxel axes) accepted as orthogonal.
SHEAR_TOL = 1e-4
#: Largest qform/sform difference (any matrix entry, mm) accepted as agreement.
XFORM_TOL_MM = 1e-3
#: Which NIfTI header transform to use when qform and sform disagree (``--affine-from``).
AFFINE_SOURCES = ("qform", "sform")


@dataclass(frozen=True)
class ReadOptions:
    """How volumes are read, the same in every command.

    Args:
        affine_from: ``qform`` or ``sform``: the NIfTI transform that wins when both are set and
            disagree, or when the sform is sheared (CLI ``--affine-from``). None refuses such files.
        series_uid: the DICOM series to read from folders holding several (CLI ``--series-uid``).

    Example:
        >>> ReadOptions(affine_from="qform").affine_from
        'qform'
    """

    affine_from: str | None = None
    series_uid: str | None = None

    def __post_init__(self) -> None:
        if self.affine_from is not None and self.affine_from not in AFFINE_SOURCES:
            raise ValueError(f"affine_from must be one of {AFFINE_SOURCES} or None, got {self.affine_from!r}")


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
    ``qform_sform``, ``grid_mismatch``, ``label_values``, ``empty_mask``, ``missing_key``,
    ``channels``.
    """

    file: str
    check: str
    message: str
    case: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = f" [case {self.case!r}, key {self.key!r}]" if self.case is not None else ""
        return f"{self.file}: {self.message}{where}"


def choose_affine(volume: Volume, file: str, options: ReadOptions = ReadOptions()) -> tuple[Volume, list[Problem]]:
    """Resolve the header transforms of a NIfTI volume; other formats have one and pass through.

    When qform and sform are both set and disagree, or the affine is sheared, readers differ on
    where the image is: that is a problem unless ``options.affine_from`` picks one (a qform cannot
    be sheared). Returns the volume on the chosen affine and the problems left.

    Example:
        >>> vol, problems = choose_affine(read_volume("mr.nii.gz"), "mr.nii.gz", ReadOptions("qform"))
    """
    (qcode, qform), (scode, sform) = volume.meta.get("qform", (0, None)), volume.meta.get("sform", (0, None))
    both = qcode > 0 and scode > 0 and qform is not None and sform is not None
    diff = float(np.max(np.abs(qform - sform))) if both else 0.0
    sheared = shear(volume.affine) > SHEAR_TOL
    if (diff > XFORM_TOL_MM or sheared) and options.affine_from is not None:
        code, chosen = (qcode, qform) if options.affine_from == "qform" else (scode, sform)
        if code > 0 and chosen is not None:
            meta = {**volume.meta, "affine_from": options.affine_from}
            volume = Volume(volume.array, chosen, meta)
            sheared, diff = shear(volume.affine) > SHEAR_TOL, 0.0
    problems = []
    if sheared:
        angle = np.degrees(np.arccos(min(shear(volume.affine), 1.0)))
        fix = " or pick the qform with --affine-from qform" if qcode > 0 and options.affine_from != "qform" else ""
        problems.append(
            Problem(
                file,
                "sheared_affine",
                f"sheared affine (voxel axes {angle:.2f} deg apart instead of 90); resample onto an orthogonal grid{fix}",
            )
        )
    if diff > XFORM_TOL_MM:
        problems.append(
            Problem(
                file,
                "qform_sform",
                f"qform and sform disagree by up to {diff:.4f} (qform_code={qcode}, sform_code={scode}); readers differ on where "
                "this image is: set both to the right affine, or pick one with --affine-from qform|sform",
            )
        )
    return volume, problems


def check_volume(
    volume: Volume, file: str, labels: tuple[int, ...] | None = None, nonempty: bool | None = None, options: ReadOptions = ReadOptions()
) -> list[Problem]:
    """Problems of one decoded volume: non-finite voxels, shear, qform/sform, label values, emptiness.

    Args:
        volume: the decoded volume.
        file: the name to report.
        labels: the values allowed for a label volume; None for an image. ``()`` allows any
            non-negative integer (a label map whose set is not declared).
        nonempty: whether a label volume must hold a non-zero voxel (masks and regions); default:
            when ``labels`` is ``(0, 1)``.
        options: the header choice (:func:`choose_affine`).

    Example:
        >>> [str(p) for p in check_volume(read_volume("mask.nii.gz"), "mask.nii.gz", labels=(0, 1))]
        ['mask.nii.gz: empty mask: no voxel is non-zero']
    """
    problems = []
    arr = volume.array
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        problems.append(Problem(file, "non_finite", f"{bad} NaN/Inf voxel(s) of {arr.size}; fix or mask them before use"))
    problems += choose_affine(volume, file, options)[1]
    if labels is not None:
        finite = arr[np.isfinite(arr)] if bad else arr
        values = np.unique(finite)
        if labels:
            outside = [v for v in values.tolist() if v not in labels]
            declared = f"the declared set {list(labels)}"
        else:
            outside = [v for v in values.tolist() if v < 0 or v != int(v)]
            declared = "non-negative integer labels"
        if outside:
            shown = ", ".join(f"{v:g}" for v in outside[:8]) + (" ..." if len(outside) > 8 else "")
            problems.append(
                Problem(
                    file,
                    "label_values",
                    f'label values {shown} outside {declared} (declare the set in a datalist: "label_values": {{KEY: [...]}})',
                )
            )
        if (nonempty if nonempty is not None else tuple(labels) == (0, 1)) and not np.any(finite != 0):
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


def count_non_finite(array: np.ndarray) -> int:
    """NaN/Inf voxels in ``array`` (outputs are checked with it before they are written)."""
    return int(np.count_nonzero(~np.isfinite(array)))
