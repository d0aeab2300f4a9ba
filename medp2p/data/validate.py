"""Dataset validation: every problem a training or inference run would trip over, one line each.

The checks are the ones every command applies where it reads a case
(:func:`medp2p.data.case_reader.inspect_case`): per file, it decodes completely (truncated
files fail), no NaN/Inf voxels, the affine is not sheared, NIfTI qform and sform agree, label
keys hold only their declared values and masks are not empty, DICOM series are complete and
evenly spaced. Per case: the keys a task needs are present, and all images of the case share one
grid (shape, spacing, direction, origin within :class:`GridTolerance`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medp2p.data.case_reader import CaseKeys, as_single_source, inspect_case
from medp2p.data.cases import Case, image_keys, load_datalist
from medp2p.data.checks import (
    SHEAR_TOL,
    XFORM_TOL_MM,
    GridTolerance,
    Problem,
    ReadOptions,
    check_volume,
    compare_grids,
)

__all__ = [
    "SHEAR_TOL",
    "XFORM_TOL_MM",
    "GridTolerance",
    "Problem",
    "ReadOptions",
    "ValidationReport",
    "check_volume",
    "compare_grids",
    "validate_case",
    "validate_data",
]


@dataclass
class ValidationReport:
    """What :func:`validate_data` checked and found; ``ok`` when nothing was found."""

    cases: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able values."""
        return {"ok": self.ok, "cases": self.cases, "files": self.files, "problems": [asdict(p) for p in self.problems]}


def validate_case(
    case: Case,
    required_keys: Iterable[str] = (),
    datalist: dict[str, Any] | None = None,
    tol: GridTolerance = GridTolerance(),
    keys: CaseKeys | None = None,
    role: str = "train",
    options: ReadOptions = ReadOptions(),
) -> tuple[list[Problem], int]:
    """Check one case with the reader every command uses; returns its problems and how many files were read.

    Args:
        case: the datalist case.
        required_keys: keys it must have besides those of ``keys`` (``--require``).
        datalist: its datalist (declared label values).
        tol: grid agreement tolerance.
        keys: a task's keys (``--task``): needed and optional keys by ``role``, label sets; None
            checks every key of the case with the default label sets.
        role: ``train`` for training and validation sections, ``predict`` for test cases.
        options: header and series choices (``--affine-from``, ``--series-uid``).

    Example:
        >>> problems, n = validate_case({"id": "c0", "mr": "c0/mr.nii.gz"}, ["mr", "ct"])
        >>> problems[0].check
        'missing_key'
    """
    cid = str(case["id"])
    problems: list[Problem] = []
    extra = [k for k in required_keys if k not in case and (keys is None or k not in keys.needed(role, case))]
    if extra:
        where = next((Path(case[k] if isinstance(case[k], str) else case[k][0]).parent for k in image_keys(case)), Path(cid))
        problems += [Problem(str(where), "missing_key", f"no '{k}' image for this case (has {image_keys(case)})", cid, k) for k in extra]
    _, found, files = inspect_case(case, keys, role, datalist, options, tol, keep=False, every_key=True)
    return problems + found, files


def validate_data(
    data: str | Path,
    required_keys: Iterable[str] = (),
    sections: Iterable[str] | None = None,
    tol: GridTolerance = GridTolerance(),
    on_case: Callable[[str], None] | None = None,
    keys: CaseKeys | None = None,
    options: ReadOptions = ReadOptions(),
) -> ValidationReport:
    """Validate every case of every section (or of ``sections``) of the dataset at ``data``.

    Args:
        data: anything :func:`~medp2p.data.cases.load_datalist` reads.
        required_keys: keys each training/validation case must have besides the task's.
        sections: the datalist sections to check; all of them by default.
        tol: grid agreement tolerance.
        on_case: called with each case id before it is checked (progress display).
        keys: the task's keys (``medp2p validate --task``), the rule ``train`` applies: a
            missing optional key (mri2ct's ``mask``) is not a problem.
        options: header and series choices.

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
            # Test cases have no targets: only what prediction reads is required of them, and a
            # lone image is the source, as predict reads it.
            role = "predict" if section == "test" else "train"
            need = [k for k in required if k in case] if section == "test" else required
            if role == "predict" and keys is not None:
                case = as_single_source(case, keys)
            problems, files = validate_case(case, need, datalist, tol, keys, role, options)
            report.cases += 1
            report.files += files
            report.problems += problems
    return report
